"""``cfgdiff serve``: online reconstruction on Ray Serve.

One deployment, ``CfgdiffService``: each replica loads the model once and answers ``POST ROUTE``
(``cfgdiff.serving`` decodes and validates the request), ``GET /healthz`` and ``GET /info``. Concurrent
requests are packed by ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``); batches formed while
the sampler is busy are merged by ``cfgdiff.batcher.Batcher`` into its next call (one sampler call per
sampler setting), run in a thread so that the replica keeps answering health checks. Row i of a request
draws from the streams of (its seed, i), so an answer does not depend on what it was batched with. A request
not answered within its ``timeout_s`` (default ``request_timeout_s``) gets 504 and is cancelled: skipped if
its turn has not come. Metrics: Serve's own (requests, latency, queue) plus ``cfgdiff_rows_reconstructed``,
``cfgdiff_nfe`` and ``cfgdiff_requests_timed_out``.

The checkpoint's config and weights travel with the deployment (bytes in the bound arguments), so replicas
on other nodes need no shared filesystem; the ``serve deploy`` config (``print_config``) names a path instead.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import torch
from ray import serve
from ray.serve.metrics import Counter
from starlette.requests import Request
from starlette.responses import Response

from cfgdiff import fsio
from cfgdiff.api import Reconstructor
from cfgdiff.batcher import Batcher
from cfgdiff.checkpoint import checkpoint_files, load_checkpoint, load_checkpoint_files
from cfgdiff.errors import InputError
from cfgdiff.serving import MAX_TIMEOUT_S, RequestError, decode_request, encode_answer, model_info, run_batch

APP = "cfgdiff"


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc).encode() if not isinstance(doc, bytes) else doc, status_code=status,
                    media_type="application/json")


CONCURRENT_BATCHES = 4  # @serve.batch batches waiting for the Batcher at once (each up to max_batch_size)


@serve.deployment(name="CfgdiffService", max_ongoing_requests=64)
class CfgdiffService:
    def __init__(self, ckpt_files: dict[str, bytes], route: str = "/reconstruct", max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.01, max_request_mb: float = 16.0, threads: int = 1,
                 request_timeout_s: float | None = None):
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.rec = Reconstructor(load_checkpoint_files(ckpt_files), device)
        self.route, self.max_bytes, self.timeout_s = route, int(max_request_mb * 2**20), request_timeout_s
        self.reconstruct_batch.set_max_batch_size(max_batch_size)
        self.reconstruct_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batcher = Batcher(lambda jobs: run_batch(self.rec, jobs), max_jobs=max_batch_size)
        self.rows = Counter("cfgdiff_rows_reconstructed", description="Fields reconstructed (each of K samples).")
        self.nfe = Counter("cfgdiff_nfe", description="Network evaluations spent on reconstructions.")
        self.timed_out = Counter("cfgdiff_requests_timed_out", description="Requests answered 504 and cancelled.")

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/") or "/", request.method
        if path == "/healthz" and method == "GET":
            return _json({"status": "ok"})
        if path == "/info" and method == "GET":
            return _json(model_info(self.rec))
        if path != self.route.rstrip("/"):
            return _json({"error": f"no route {path}; POST {self.route}, GET /healthz, GET /info"}, 404)
        if method != "POST":
            return _json({"error": f"{method} {path}: use POST"}, 405)
        try:
            job = decode_request(await request.body(), self.rec, self.max_bytes,
                                 request.headers.get("content-type", "application/json"))
        except RequestError as e:
            return _json(e.body(), e.status)
        timeout = job.timeout_s or self.timeout_s
        try:
            answer = await asyncio.wait_for(self.reconstruct_batch(job), timeout)
        except InputError as e:  # a request that passed decoding but not the sampler's own checks
            return _json({"error": str(e), "field": "condition"}, 422)
        except asyncio.TimeoutError:
            job.cancelled = True  # the Batcher skips it if its turn has not come
            self.timed_out.inc()
            return _json({"error": f"timeout_s: no answer within {timeout:g} s; the request was cancelled",
                          "field": "timeout_s"}, 504)
        return _json(encode_answer(job, answer))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, max_concurrent_batches=CONCURRENT_BATCHES)
    async def reconstruct_batch(self, jobs: list) -> list:
        answers = await self.batcher.submit(jobs)
        for a in answers:
            if a is not None:
                self.rows.inc(a["meta"]["rows"] * a["meta"]["num_samples"])
                self.nfe.inc(a["meta"]["nfe"] * a["meta"]["rows"] * a["meta"]["num_samples"])
        return answers


def replica_files(path: str) -> dict[str, bytes]:
    """The files a replica needs (config and weights, not the training state), checked here first."""
    load_checkpoint(path).build_model("cpu")  # weights vs config checked here, not inside a replica
    return checkpoint_files(path)


def _scaling(replicas: int, autoscale: tuple[int, int] | None, max_batch_size: int) -> dict[str, Any]:
    """The deployment's replica options: a fixed count, or an autoscaling range targeting full batches."""
    ongoing = {"max_ongoing_requests": max(64, max_batch_size * CONCURRENT_BATCHES)}
    if not autoscale:
        return {"num_replicas": replicas, **ongoing}
    if not 0 <= autoscale[0] <= autoscale[1] >= 1:
        raise InputError(f"--autoscale {autoscale[0]},{autoscale[1]}: expected 0 <= MIN <= MAX and MAX >= 1")
    return {"autoscaling_config": {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                   "target_ongoing_requests": max_batch_size}, **ongoing}


def build(checkpoint: str, *, replicas: int = 1, autoscale: tuple[int, int] | None = None, gpus_per_replica: float = 0.0,
          cpus_per_replica: float = 1.0, route: str = "/reconstruct", max_batch_size: int = 16,
          batch_wait_timeout_s: float = 0.01, max_request_mb: float = 16.0, threads: int = 1,
          request_timeout_s: float | None = None):
    """The bound application (validated before anything is deployed)."""
    if replicas < 1 or max_batch_size < 1 or batch_wait_timeout_s < 0 or max_request_mb <= 0:
        raise InputError("--replicas and --max-batch-size must be >= 1, --batch-wait-s >= 0, --max-request-mb > 0")
    if request_timeout_s is not None and not 0 < request_timeout_s <= MAX_TIMEOUT_S:
        raise InputError(f"--request-timeout-s must be in (0, {MAX_TIMEOUT_S:g}], got {request_timeout_s:g}")
    if not route.startswith("/") or route.rstrip("/") in ("", "/healthz", "/info"):
        raise InputError(f"--route {route!r}: expected a path such as /reconstruct (not /, /healthz or /info)")
    dep = CfgdiffService.options(**_scaling(replicas, autoscale, max_batch_size),
                                 ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    return dep.bind(replica_files(checkpoint), route=route, max_batch_size=max_batch_size,
                    batch_wait_timeout_s=batch_wait_timeout_s, max_request_mb=max_request_mb, threads=threads,
                    request_timeout_s=request_timeout_s)


def app(args: dict[str, Any]):
    """Application builder for ``serve run``/``serve deploy`` configs: ``import_path: cluster.serve:app``."""
    args = dict(args)
    checkpoint = args.pop("checkpoint")
    return build(checkpoint, **args)


def deploy(application, *, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve's HTTP proxy on host:port and run the application; returns its base URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name=APP, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def undeploy(shutdown: bool = True) -> None:
    """Remove the application (and Serve's controller and proxies with ``shutdown``)."""
    serve.delete(APP)
    if shutdown:
        serve.shutdown()


def print_config(checkpoint: str, *, replicas: int, autoscale, gpus_per_replica: float, port: int, route: str,
                 max_batch_size: int, batch_wait_timeout_s: float, max_request_mb: float,
                 request_timeout_s: float | None = None) -> str:
    """A ``serve deploy`` / RayService config for this model (a URI, or a local path that must be readable on the
    nodes)."""
    import yaml

    dep = {"name": "CfgdiffService", **_scaling(replicas, autoscale, max_batch_size),
           "ray_actor_options": {"num_cpus": 1, "num_gpus": gpus_per_replica}}
    doc = {"proxy_location": "EveryNode", "http_options": {"host": "0.0.0.0", "port": port},
           "applications": [{"name": APP, "route_prefix": "/", "import_path": "cluster.serve:app",
                             "args": {"checkpoint": checkpoint if fsio.is_uri(checkpoint) else str(Path(checkpoint).resolve()),
                                      "route": route,
                                      "max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s,
                                      "max_request_mb": max_request_mb, "request_timeout_s": request_timeout_s},
                             "deployments": [dep]}]}
    return yaml.safe_dump(doc, sort_keys=False)
