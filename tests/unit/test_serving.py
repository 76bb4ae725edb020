"""The service's request handling without a web server (#23): decoding and its errors, and batching that
leaves every request's answer as it would be alone."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch

import cfgdiff
from cfgdiff.checkpoint import save_checkpoint
from cfgdiff.config import ExperimentConfig, ModelConfig, SamplerConfig, ScheduleConfig
from cfgdiff.normalize import ChannelAffine, Normalization
from cfgdiff.serving import RequestError, decode_request, encode_answer, run_batch
from cfgdiff.unet import ConditionalUNet

TINY = ModelConfig(image_size=(8, 8), dim=8, dim_mults=(1, 2), num_res_blocks=1, heads=1, dim_head=4, groups=4)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    cfg = ExperimentConfig(model=TINY, schedule=ScheduleConfig(num_timesteps=100), sampler=SamplerConfig(steps=3))
    torch.manual_seed(0)
    norm = Normalization("minmax", ChannelAffine((0.0,), (2.0,)), ChannelAffine((0.0,), (2.0,)))
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", ConditionalUNet(cfg.model).state_dict(), cfg, norm)
    return cfgdiff.load(str(path))


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return {"npy": base64.b64encode(buf.getvalue()).decode()}


def _body(**kw):
    return json.dumps(kw).encode()


def test_batched_requests_get_what_each_would_get_alone(rec):
    rng = np.random.default_rng(0)
    jobs, alone = [], []
    for i, n in enumerate((1, 3, 2)):
        cond = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
        mask = (rng.uniform(size=(n, 1, 8, 8)) < 0.4).astype(np.float32)
        jobs.append(decode_request(_body(condition=_npy(cond), mask=_npy(mask), seed=10 + i,
                                         num_samples=2), rec, 1 << 20))
        alone.append(rec.reconstruct(cond, mask, seed=10 + i, num_samples=2))
    answers = run_batch(rec, jobs)
    for a, ref, job in zip(answers, alone, jobs):
        assert np.array_equal(a["samples"], ref.samples) and np.array_equal(a["mean"], ref.mean)
        assert a["meta"]["batched_rows"] == 6 and a["meta"]["rows"] == len(job.cond)
    doc = json.loads(encode_answer(jobs[1], answers[1]))
    assert set(doc) == {"reconstruction", "std", "samples", "meta"} and "npy" in doc["reconstruction"]


def test_lists_with_null_for_missing_and_one_field(rec):
    field = np.arange(64, dtype=np.float64).reshape(8, 8) / 64
    lists = np.where(np.arange(64).reshape(8, 8) % 3 == 0, field, np.nan).tolist()
    lists = [[None if np.isnan(v) else v for v in row] for row in lists]
    job = decode_request(_body(condition=lists), rec, 1 << 20)
    assert job.cond.shape == (1, 1, 8, 8) and job.encoding == "list" and np.isnan(job.cond).sum() == 42
    doc = json.loads(encode_answer(job, run_batch(rec, [job])[0]))
    out = np.asarray(doc["reconstruction"])
    known = ~np.isnan(job.cond)
    assert out.shape == (1, 1, 8, 8) and np.array_equal(out[known], job.cond[known])


@pytest.mark.parametrize("body,status,field", [
    (b"\xff\xfe", 400, "body"),
    (b"[1, 2]", 400, "condition"),
    (_body(mask=[[1]]), 422, "condition"),
    (_body(condition={"npy": "bm90IG5weQ=="}), 400, "condition"),
    (_body(condition=np.zeros((1, 1, 6, 8)).tolist(), mask=np.ones((1, 1, 6, 8)).tolist()), 422, "condition"),
    (_body(condition=np.zeros((1, 3, 8, 8)).tolist()), 422, "condition"),
    (_body(condition=np.zeros((1, 1, 8, 8)).tolist(), mask=np.full((1, 1, 8, 8), 2).tolist()), 422, "mask"),
    (_body(condition=np.zeros((1, 1, 8, 8)).tolist(), mask=np.ones((2, 1, 8, 8)).tolist()), 422, "mask"),
    (_body(condition=np.zeros((1, 1, 8, 8)).tolist()), 422, "mask"),
    (_body(condition=np.full((1, 1, 8, 8), np.nan).tolist(), mask=np.ones((1, 1, 8, 8)).tolist()), 422, "condition"),
    (_body(condition=np.full((1, 1, 8, 8), 1e9).tolist(), mask=np.ones((1, 1, 8, 8)).tolist()), 422, "condition"),
    (_body(condition=np.zeros((1, 1, 8, 8)).tolist(), mask=np.ones((1, 1, 8, 8)).tolist(), steps=101), 422, "steps"),
    (_body(condition=np.zeros((1, 1, 8, 8)).tolist(), mask=np.ones((1, 1, 8, 8)).tolist(), steps=2.5), 422, "steps"),
    (_body(condition=np.zeros((1, 1, 8, 8)).tolist(), mask=np.ones((1, 1, 8, 8)).tolist(), num_samples=0), 422,
     "num_samples"),
    (_body(condition=np.zeros((1, 1, 8, 8)).tolist(), mask=np.ones((1, 1, 8, 8)).tolist(), method="euler"), 422,
     "method"),
])
def test_bad_requests_name_the_field(rec, body, status, field):
    with pytest.raises(RequestError) as e:
        decode_request(body, rec, 1 << 20)
    assert (e.value.status, e.value.field) == (status, field), str(e.value)
    assert json.loads(e.value.body())["field"] == field


def test_body_over_the_limit_is_413(rec):
    with pytest.raises(RequestError) as e:
        decode_request(b"x" * 1001, rec, 1000)
    assert e.value.status == 413 and "over the limit of 1000" in str(e.value)


def _multipart(fields: dict) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser or `curl -F` sends it."""
    b = "cfgdiffboundary"
    out = b""
    for name, (data, is_file) in fields.items():
        disp = f'form-data; name="{name}"' + (f'; filename="{name}.png"' if is_file else "")
        ctype = "Content-Type: image/png\r\n" if is_file else ""
        out += f"--{b}\r\nContent-Disposition: {disp}\r\n{ctype}\r\n".encode() + data + b"\r\n"
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _png(a) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_multipart_png_in_png_out(rec):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    mask = (rng.uniform(size=(8, 8)) < 0.5).astype(np.uint8) * 255
    body, ctype = _multipart({"condition": (_png(img), True), "mask": (_png(mask), True), "seed": (b"3", False),
                              "num_samples": (b"2", False)})
    job = decode_request(body, rec, 1 << 20, ctype)
    assert job.encoding == "png" and job.seed == 3 and job.num_samples == 2 and job.cond.shape == (1, 1, 8, 8)
    doc = json.loads(encode_answer(job, run_batch(rec, [job])[0]))
    from PIL import Image

    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(doc["reconstruction"][0]["png"]))))
    assert out.dtype == np.uint8 and np.array_equal(out[mask > 0], img[mask > 0]), "known pixels exact"
    assert "npy" in doc["std"]
    bad, ctype = _multipart({"condition": (b"not a png", True)})
    with pytest.raises(RequestError) as e:
        decode_request(bad, rec, 1 << 20, ctype)
    assert (e.value.status, e.value.field) == (400, "condition")
    grey, ctype = _multipart({"condition": (_png(img), True), "mask": (_png(np.full((8, 8), 7, np.uint8)), True)})
    with pytest.raises(RequestError) as e:
        decode_request(grey, rec, 1 << 20, ctype)
    assert (e.value.status, e.value.field) == (422, "mask")
