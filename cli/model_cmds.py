"""``cfgdiff info``."""

from __future__ import annotations

import click

from cfgdiff.checkpoint import load_checkpoint
from cfgdiff.flops import forward_flops
from cfgdiff.unet import num_parameters

from .common import echo_json


@click.command("info")
@click.argument("checkpoint", type=click.Path())
def info_cmd(checkpoint):
    """Print a checkpoint's config, parameter count and forward GFLOPs per sample."""
    ck = load_checkpoint(checkpoint)
    model = ck.build_model()
    echo_json({"config": ck.config.to_dict(), "normalization": ck.normalization.to_dict(), "meta": ck.meta})
    click.echo(f"parameters: {num_parameters(model):,}")
    click.echo(f"forward GFLOPs per sample: {forward_flops(model, ck.config.model) / 1e9:.3f}")


COMMANDS = [info_cmd]
