"""``cfgdiff demo``: the end-to-end job behind `make run`."""

from __future__ import annotations

import click

from .common import ray_options


@click.command("demo")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for data, runs, reconstructions and PNGs.")
@click.option("--quick", is_flag=True, help="A much smaller run (about 3 minutes on 2 cores) for smoke tests.")
@click.option("--skip-tune", is_flag=True, help="Skip the Ray Tune stage.")
@ray_options
def demo_cmd(out, quick, skip_tune, ray_address, num_cpus, dashboard):
    """Run the whole job on offline demo data: generate, convert, train (Ray Train), tune p and w
    (Ray Tune), reconstruct on Ray actors, compare with mean-fill, LMMSE and the Bayes optimum, write PNGs."""
    from cluster.pipeline import DemoPlan, run_demo

    run_demo(DemoPlan.quick(out) if quick else DemoPlan.default(out), address=ray_address, num_cpus=num_cpus,
             skip_tune=skip_tune, dashboard=dashboard or not skip_tune, echo=click.echo,
             quiet=click.get_current_context().obj.get("verbose") is not True)


COMMANDS = [demo_cmd]
