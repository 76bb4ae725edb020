"""``cfgdiff serve``."""

from __future__ import annotations

import signal
import threading

import click

from cfgdiff.errors import InputError

from .common import int_pair, ray_options, storage_endpoint_option


@click.command("serve")
@click.argument("checkpoint", type=click.Path())
@ray_options
@click.option("--replicas", type=int, default=1, show_default=True, help="Replicas (each loads the model once).")
@click.option("--autoscale", metavar="MIN,MAX", help="Autoscale between MIN and MAX replicas instead of --replicas.")
@click.option("--gpus-per-replica", type=float, default=0.0, show_default=True, help="0.5 packs two replicas per GPU.")
@click.option("--threads-per-replica", type=int, default=1, show_default=True, help="torch threads per replica.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the HTTP proxy (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--route", default="/reconstruct", show_default=True, help="Path of the POST endpoint.")
@click.option("--max-batch-size", type=int, default=16, show_default=True,
              help="Requests packed into one sampler call (@serve.batch).")
@click.option("--batch-wait-s", type=float, default=0.01, show_default=True,
              help="How long a batch waits to fill before it runs.")
@click.option("--max-request-mb", type=float, default=16.0, show_default=True, help="Larger bodies get HTTP 413.")
@click.option("--request-timeout-s", type=float, default=None,
              help="Answer 504 and cancel a request not answered after this long (a request's timeout_s wins).")
@storage_endpoint_option
@click.option("--print-config", is_flag=True, help="Print a `serve deploy` / RayService config for this model and exit.")
@click.pass_context
def serve_cmd(ctx, checkpoint, ray_address, num_cpus, dashboard, replicas, autoscale, gpus_per_replica,
              threads_per_replica, host, port, route, max_batch_size, batch_wait_s, max_request_mb, request_timeout_s,
              print_config):
    """Serve CHECKPOINT over HTTP on Ray Serve until Ctrl-C: POST ROUTE, GET /healthz, GET /info."""
    from cluster.runtime import start_ray, stop_ray
    from cluster.serve import build, deploy, undeploy
    from cluster.serve import print_config as make_config

    scale = int_pair(autoscale, "--autoscale", "1,4")
    if scale and replicas != 1:
        raise InputError("--replicas and --autoscale are exclusive")
    if not 0 < port < 65536:
        raise InputError(f"--port must be in 1..65535, got {port}")
    if print_config:
        click.echo(make_config(checkpoint, replicas=replicas, autoscale=scale, gpus_per_replica=gpus_per_replica,
                               port=port, route=route, max_batch_size=max_batch_size,
                               batch_wait_timeout_s=batch_wait_s, max_request_mb=max_request_mb,
                               request_timeout_s=request_timeout_s), nl=False)
        return
    app = build(checkpoint, replicas=replicas, autoscale=scale, gpus_per_replica=gpus_per_replica, route=route,
                max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s, max_request_mb=max_request_mb,
                threads=threads_per_replica, request_timeout_s=request_timeout_s)
    info = start_ray(ray_address, num_cpus, dashboard=dashboard, quiet=ctx.obj.get("verbose") is not True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        url = deploy(app, host=host, port=port)
        click.echo(f"serving {checkpoint} at {url}{route} ({'embedded Ray' if info.embedded else info.address}); "
                   f"GET {url}/healthz, {url}/info; Ctrl-C stops", err=False)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        click.echo("stopping: removing the application")
        undeploy(shutdown=True)
    finally:
        stop_ray(info)


COMMANDS = [serve_cmd]
