"""``cfgdiff info`` and ``cfgdiff export``."""

from __future__ import annotations

import click

from cfgdiff import fsio
from cfgdiff.checkpoint import load_checkpoint
from cfgdiff.export import export_checkpoint, find_checkpoint
from cfgdiff.flops import forward_flops
from cfgdiff.presets import describe
from cfgdiff.unet import num_parameters

from .common import echo_json, storage_endpoint_option


@click.command("info")
@click.argument("checkpoint", type=click.Path())
@storage_endpoint_option
def info_cmd(checkpoint):
    """Print a checkpoint's config, its levels and channels, parameter count and forward GFLOPs per
    sample at the size it was trained on."""
    ck = load_checkpoint(checkpoint)
    model = ck.build_model()
    mc = ck.config.model
    echo_json({"config": ck.config.to_dict(), "normalization": ck.normalization.to_dict(), "meta": ck.meta})
    click.echo(f"architecture: {mc.preset or 'custom'} preset, {mc.image_size[0]}x{mc.image_size[1]} fields, "
               f"{mc.in_channels} target / {mc.cond_channels} condition channel(s)")
    for line in describe(mc):
        click.echo(f"  {line}")
    click.echo(f"parameters: {num_parameters(model):,}")
    click.echo(f"forward GFLOPs per sample: {forward_flops(model, mc) / 1e9:.3f}")


@click.command("export")
@click.argument("run", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="The model folder to write.")
@click.option("--checkpoint", "which", default="latest", show_default=True, metavar="latest|best|export|step_N",
              help="Which of the run's checkpoints (ignored when RUN is itself a checkpoint).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@storage_endpoint_option
def export_cmd(run, out, which, overwrite):
    """Export a checkpoint of RUN (a `cfgdiff train` run folder, or a checkpoint folder) as a model to share:
    config.json, model.safetensors and a README.md model card, without the training state; files 0644 and
    folders 0755 under the usual umask."""
    src = find_checkpoint(run, which)
    dst = export_checkpoint(src, out, overwrite=overwrite)
    click.echo(f"exported {src} -> {dst} ({', '.join(sorted(fsio.name(f) for f in fsio.list_files(dst)))})")


COMMANDS = [info_cmd, export_cmd]
