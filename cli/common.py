"""Small shared helpers for the commands: progress bars and option groups."""

from __future__ import annotations

import functools
import json
import logging
import shlex
import sys

import click

from cfgdiff.errors import InputError
from cfgdiff.progress import Progress as CoreProgress


class Progress:
    """(done, total) callbacks drawn by ``cfgdiff.progress.Progress``: a bar on a terminal, a line per
    interval otherwise, with an ETA from the recent rate; silent when not enabled (--quiet)."""

    def __init__(self, label: str, enabled: bool = True, unit: str = "row"):
        self.label, self.enabled, self.unit, self.bar = label, enabled, unit, None

    def __call__(self, *args) -> None:
        done, total = args[-2], args[-1]
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = CoreProgress(self.label.strip(), total, unit=self.unit)
        self.bar.update(done)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def setup_logging(verbose: bool | None) -> None:
    """The CLI's console: the ``cfgdiff`` logger to stderr, INFO by default, WARNING with --quiet, DEBUG with
    --verbose. Library code only logs; a notebook user configures the same logger as they like."""
    log = logging.getLogger("cfgdiff")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if verbose is False else logging.INFO)
    log.propagate = False  # Ray puts a handler on the root logger: without this, errors would print twice


def renamed(old: str, new_param: str, **kwargs):
    """``old`` as a hidden spelling of the option whose parameter is ``new_param`` (kept for one release of
    the unified flag vocabulary); given, its value replaces the new option's."""

    def store(ctx: click.Context, param, value):
        if value is not None and value != ():
            ctx.meta.setdefault("cfgdiff_renamed", {})[new_param] = value
        return value

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kw):
            kw.update(click.get_current_context().meta.get("cfgdiff_renamed", {}))
            return f(*args, **kw)

        return click.option(old, "_renamed_" + new_param, hidden=True, expose_value=False, callback=store,
                            default=None, **kwargs)(wrapper)

    return deco


def resume_option(help_text: str):
    """``--resume [NAME]`` for train and tune: bare (value ""), it continues ``--name``; with a value, NAME."""
    return click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[NAME]", help=help_text)


def preset_option(f):
    """``--preset`` for train and tune (cfgdiff.presets)."""
    from cfgdiff.presets import PRESETS

    return click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                        help="Architecture size, scaled to the field (or crop) size: levels to an 8-16 px bottleneck, "
                             "attention placed by token count. Default: small, unless the config or --set "
                             "customises the architecture. --set model.* still wins.")(f)


def command_line(ctx: click.Context) -> str:
    """The command as the user typed it (for model cards)."""
    root = ctx.find_root()
    return shlex.join(["cfgdiff", *((root.obj or {}).get("argv") or sys.argv[1:])])


def ray_options(f):
    f = click.option("--ray-address", default=None, metavar="ADDR",
                     help="Join a Ray cluster (auto, HOST:PORT, ray://HOST:10001). Default: RAY_ADDRESS, "
                          "else an embedded local Ray started in-process.")(f)
    f = click.option("--num-cpus", type=int, default=None,
                     help="Logical CPUs of the embedded local Ray (default: cores + 4).")(f)
    f = click.option("--dashboard", is_flag=True,
                     help="Start the embedded Ray with its dashboard on 127.0.0.1:8265 (off by default: ~2 s faster).")(f)
    return f


def storage_endpoint_option(f):
    """``--storage-endpoint URL``, applied before any other option is read (so that an s3:// --data or --out
    given with it resolves against that server)."""
    def apply(ctx, param, value):
        if value:
            from cfgdiff.fsio import set_endpoint
            set_endpoint(value)
        return value

    return click.option("--storage-endpoint", metavar="URL", callback=apply, expose_value=False, is_eager=True,
                        help="S3-compatible server for s3:// paths (MinIO, Ceph); default: AWS_ENDPOINT_URL, else AWS.")(f)


def int_pair(value: str | None, option: str, example: str) -> tuple[int, int] | None:
    """``"A,B"`` -> (A, B) for flags such as ``--resample J,R``; None when not given."""
    if not value:
        return None
    try:
        a, b = (int(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"{option} {value!r}: expected two integers such as {example}") from None
    return a, b


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def fmt_metrics(m: dict) -> str:
    keys = ("psnr", "ssim", "mae_missing", "known_error", "coverage_2std", "std_error_corr", "val_loss")
    return "  ".join(f"{k} {m[k]:.4g}" for k in keys if k in m and m[k] is not None)
