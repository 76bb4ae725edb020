"""Small shared helpers for the commands: progress bars and option groups."""

from __future__ import annotations

import json

import click


class Progress:
    """A click progress bar driven by (done, total) callbacks; silent when quiet."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.bar, self.done = label, enabled, None, 0

    def __call__(self, *args) -> None:
        done, total = args[-2], args[-1]
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, show_eta=True, show_pos=True, file=None)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def ray_options(f):
    f = click.option("--ray-address", default=None, metavar="ADDR",
                     help="Join a Ray cluster (auto, HOST:PORT, ray://HOST:10001). Default: RAY_ADDRESS, "
                          "else an embedded local Ray started in-process.")(f)
    f = click.option("--num-cpus", type=int, default=None,
                     help="Logical CPUs of the embedded local Ray (default: cores + 4).")(f)
    f = click.option("--dashboard", is_flag=True,
                     help="Start the embedded Ray with its dashboard on 127.0.0.1:8265 (off by default: ~2 s faster).")(f)
    return f


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def fmt_metrics(m: dict) -> str:
    keys = ("psnr", "ssim", "mae_missing", "known_error", "coverage_2std", "std_error_corr", "val_loss")
    return "  ".join(f"{k} {m[k]:.4g}" for k in keys if k in m and m[k] is not None)
