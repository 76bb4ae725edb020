"""``cfgdiff info``."""

from __future__ import annotations

import click

from cfgdiff.checkpoint import load_checkpoint
from cfgdiff.flops import forward_flops
from cfgdiff.presets import describe
from cfgdiff.unet import num_parameters

from .common import echo_json


@click.command("info")
@click.argument("checkpoint", type=click.Path())
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


COMMANDS = [info_cmd]
