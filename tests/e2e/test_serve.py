"""`cfgdiff serve` (#23): a real Ray Serve application on the session's local Ray, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import yaml

import cfgdiff
from cfgdiff.client import Client, ServiceError
from tests.helpers import run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_session, tiny_checkpoint):
    from ray import serve

    from cluster.serve import build, deploy, undeploy

    url = deploy(build(tiny_checkpoint, max_batch_size=8, batch_wait_timeout_s=0.2, max_request_mb=0.25),
                 port=_free_port())
    client = Client(url, timeout=120)
    deadline = time.time() + 60
    while True:
        try:
            client.health()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    yield url, client
    undeploy(shutdown=False)
    try:
        assert "cfgdiff" not in serve.status().applications, "shutting down removes the application"
    finally:
        serve.shutdown()


def _request(i: int):
    rng = np.random.default_rng(100 + i)
    n = 1 + i % 3
    cond = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    mask = (rng.uniform(size=(n, 1, 16, 16)) < 0.3).astype(np.float32)
    return cond, mask, {"seed": 1000 + i, "num_samples": 1 + i % 2, "steps": 3, "w": 1.5}


def _direct(checkpoint, requests):
    """``cfgdiff.load(CKPT).reconstruct(...)`` for each (cond, mask, kwargs), at 1 thread as the replica runs."""
    rec, threads = cfgdiff.load(checkpoint), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [rec.reconstruct(cond, mask, **kw) for cond, mask, kw in requests]
    finally:
        torch.set_num_threads(threads)


def test_concurrent_requests_equal_direct_reconstruct_bit_for_bit(service, tiny_checkpoint):
    url, client = service
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: client.reconstruct(*_request(i)[:2], **_request(i)[2]), range(16)))
    refs = _direct(tiny_checkpoint, [_request(i) for i in range(16)])
    for i, (a, ref) in enumerate(zip(answers, refs)):
        cond, mask, kw = _request(i)
        assert np.array_equal(a.mean, ref.mean), f"request {i}: differs from reconstruct() with the same seed"
        known = mask.astype(bool)
        assert np.array_equal(a.mean[known], cond[known]), "known pixels exact"
        if kw["num_samples"] > 1:
            assert np.array_equal(a.std, ref.std) and np.array_equal(a.samples, ref.samples)
        assert a.meta["seed"] == kw["seed"] and a.meta["nfe"] > 0 and a.meta["rows"] == len(cond)
    assert max(a.meta["batched_rows"] for a in answers) > max(a.meta["rows"] for a in answers), "requests were batched"


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/reconstruct", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_http_errors_and_the_replica_keeps_serving(service):
    url, client = service
    cond, mask, _ = _request(0)
    good = {"condition": cond.tolist(), "mask": mask.tolist(), "steps": 2}
    cases = [
        (b"{not json", 400, "body"),
        (json.dumps({"condition": {"npy": "@@@"}}).encode(), 400, "condition"),
        (json.dumps({"condition": np.zeros((1, 2, 16, 16)).tolist()}).encode(), 422, "condition"),
        (json.dumps({**good, "mask": (mask * 0.5).tolist()}).encode(), 422, "mask"),
        (json.dumps({**good, "condition": np.where(mask == 1, np.nan, cond).tolist()}).encode(), 422, "condition"),
        (json.dumps({**good, "steps": 0}).encode(), 422, "steps"),
        (json.dumps({**good, "steps": 10**6}).encode(), 422, "steps"),
        (json.dumps({**good, "num_samples": 1000}).encode(), 422, "num_samples"),
        (json.dumps({**good, "colour": 1}).encode(), 422, "colour"),
        (json.dumps({**good, "timeout_s": 0}).encode(), 422, "timeout_s"),
        (b"{" + b" " * 300_000 + b"}", 413, "body"),
    ]
    for body, status, field in cases:
        code, doc = _post(url, body)
        assert (code, doc.get("field")) == (status, field), (body[:80], code, doc)
        assert doc["error"].startswith(field)
    code, doc = _post(url, json.dumps(good).encode())
    assert code == 200 and np.asarray(doc["reconstruction"]).shape == (1, 1, 16, 16), "still serving"
    info = client.info()
    assert info["image_size"] == [16, 16] and info["in_channels"] == 1 and "normalization" in info
    with pytest.raises(ServiceError, match="HTTP 404"):
        client._request("/nowhere")


def test_killed_replica_is_replaced_and_retries_succeed(service):
    import ray
    from ray import serve

    url, client = service
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "CfgdiffService" in a["name"]]
    assert replicas, "the replica is a named actor in Serve's namespace"
    cond, mask, kw = _request(1)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.reconstruct, cond, mask, **{**kw, "seed": s}) for s in range(4)]
        time.sleep(0.3)
        for a in replicas:
            ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
        answers = [f.result() for f in futures]  # the client retries 5xx and dropped connections
    assert [a.meta["seed"] for a in answers] == [0, 1, 2, 3]
    assert serve.status().applications["cfgdiff"].status == "RUNNING"


def test_print_config_and_flag_errors(tiny_checkpoint, capsys):
    code, out, _ = run_cli(["serve", tiny_checkpoint, "--print-config", "--autoscale", "1,3", "--port", "8100"], capsys)
    assert code == 0
    doc = yaml.safe_load(out)
    app = doc["applications"][0]
    assert app["import_path"] == "cluster.serve:app" and doc["http_options"]["port"] == 8100
    assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 3
    code, _, err = run_cli(["serve", tiny_checkpoint, "--autoscale", "3,1"], capsys)
    assert code == 2 and "--autoscale 3,1" in err
    code, _, err = run_cli(["serve", tiny_checkpoint, "--route", "/healthz"], capsys)
    assert code == 2 and "--route" in err
    code, _, err = run_cli(["serve", tiny_checkpoint, "--request-timeout-s", "0"], capsys)
    assert code == 2 and "--request-timeout-s must be in (0, 3600], got 0" in err


def test_multipart_png_request_over_http(service):
    from PIL import Image

    from tests.unit.test_serving import _multipart, _png

    url, _ = service
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    mask = (rng.uniform(size=(16, 16)) < 0.3).astype(np.uint8) * 255
    body, ctype = _multipart({"condition": (_png(img), True), "mask": (_png(mask), True), "steps": (b"2", False)})
    req = urllib.request.Request(url + "/reconstruct", data=body, method="POST", headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=120) as r:
        doc = json.loads(r.read())
    import base64
    import io

    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(doc["reconstruction"][0]["png"]))))
    assert out.shape == (16, 16) and np.array_equal(out[mask > 0], img[mask > 0]) and doc["meta"]["steps"] == 2


def _metrics() -> dict[str, float]:
    """cfgdiff's counters and Serve's own metrics as Ray's Prometheus endpoint on this node exports them (each
    name summed over its label sets)."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("ray_cfgdiff_", "ray_serve_")):
            name = line.split("{")[0].split(" ")[0].removeprefix("ray_").removesuffix("_total")
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_a_timed_out_request_is_cancelled_and_the_queue_goes_on_and_counters_are_exported(service, tiny_checkpoint):
    url, client = service
    cond, mask, _ = _request(2)
    slow = ThreadPoolExecutor(1).submit(client.reconstruct, cond, mask, num_samples=16, steps=200, seed=5)
    time.sleep(1.0)  # the slow request is computing (batch wait 0.2 s)
    c_cond, c_mask, kw = _request(0)
    body = {"condition": c_cond.tolist(), "mask": c_mask.tolist(), **kw}
    with ThreadPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        timed_out = pool.submit(_post, url, json.dumps({**body, "seed": 1, "timeout_s": 0.5}).encode())
        time.sleep(0.1)
        other = pool.submit(client.reconstruct, c_cond, c_mask, **kw)
        code, doc = timed_out.result()
        waited = time.perf_counter() - t0
        assert (code, doc["field"]) == (504, "timeout_s") and "cancelled" in doc["error"], (code, doc)
        assert not slow.done(), "the slow request was still computing when the other one timed out"
        answer = other.result()
    assert waited < 5, f"the 504 came after {waited:.1f} s"
    assert answer.meta["batched_rows"] == answer.meta["rows"], "the cancelled request was not computed with it"
    assert np.array_equal(answer.mean, _direct(tiny_checkpoint, [(c_cond, c_mask, kw)])[0].mean)
    assert slow.result().meta["steps"] == 200
    with pytest.raises(ServiceError, match="HTTP 504"):  # the client does not retry a 504
        client.reconstruct(cond, mask, num_samples=16, steps=200, seed=6, timeout_s=0.2)
    def exported(seen: dict[str, float]) -> bool:
        return (seen.get("cfgdiff_requests_timed_out", 0) >= 2 and seen.get("cfgdiff_rows_reconstructed", 0) >= 3 * 16 + 1
                and seen.get("cfgdiff_nfe", 0) > 0 and seen.get("serve_deployment_request_counter", 0) > 0
                and seen.get("serve_deployment_processing_latency_ms_count", 0) > 0)

    deadline, seen = time.time() + 90, {}
    while time.time() < deadline and not exported(seen):  # Ray pushes metrics to the node's exporter every few s
        time.sleep(2)
        seen = _metrics()
    assert seen.get("cfgdiff_requests_timed_out", 0) >= 2, seen
    # the slow request's 3 rows x K=16, and the request queued beside the one that timed out
    assert seen.get("cfgdiff_rows_reconstructed", 0) >= 3 * 16 + 1 and seen.get("cfgdiff_nfe", 0) > 0, seen
    # Serve's own: requests, latency and queue length, as usual
    assert seen.get("serve_deployment_request_counter", 0) > 0, sorted(seen)
    assert seen.get("serve_deployment_processing_latency_ms_count", 0) > 0, sorted(seen)
    assert "serve_deployment_queued_queries" in seen or "serve_replica_processing_queries" in seen, sorted(seen)
