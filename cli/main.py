"""``cfgdiff`` entry point: one click group; bad input exits 2 with a one-line message."""

from __future__ import annotations

import os
import sys

import click

from cfgdiff import __version__
from cfgdiff.errors import InputError

from . import data_cmds, eval_cmd, infer_cmd, model_cmds, run_cmd, serve_cmd, train_cmd, tune_cmd
from .common import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cfgdiff")
@click.option("--verbose/--quiet", default=None, help="More or less console output (default: progress lines).")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool | None, debug: bool) -> None:
    """cfgdiff: reconstruct images and physical fields from partial observations with a
    conditional diffusion model and classifier-free guidance, trained and served on Ray.

    \b
    Typical flow:
      cfgdiff demo-data --out data/raw            # or your own .npy, images, .nc, .zarr, .h5
      cfgdiff convert data/raw/target.npy --degrade drop:0.8 --out data/ds
      cfgdiff train --data data/ds --workers 2    # Ray Train; add --gpu on GPU nodes
      cfgdiff tune  --data data/ds                # Ray Tune over p (dropout) and w (guidance)
      cfgdiff infer runs/cfgdiff-run/export --input data/ds --out out/recon.npy
    """
    ctx.obj = {**(ctx.obj or {}), "verbose": verbose, "debug": debug}
    setup_logging(verbose)


for mod in (data_cmds, model_cmds, train_cmd, infer_cmd, serve_cmd, tune_cmd, eval_cmd, run_cmd):
    for command in mod.COMMANDS:
        cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("CFGDIFF_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="cfgdiff", standalone_mode=False, obj={"argv": list(argv)})
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (InputError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if debug:
            raise
        click.echo(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
