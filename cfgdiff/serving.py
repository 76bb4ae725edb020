"""The reconstruction service's requests and answers, independent of the web server (``cluster/serve.py``).

A request (``POST /reconstruct``) is JSON::

    {"condition": ARRAY, "mask": ARRAY (optional, 1 = known; default: NaN in the condition = missing),
     "num_samples": 1, "steps": null, "w": null, "seed": 0, "method": null, "timeout_s": null}

where ARRAY is ``{"npy": "<base64 of a .npy file>"}`` or nested lists (null = missing), shaped (H, W) for one
field, (N, H, W) or (N, C, H, W). A ``multipart/form-data`` request sends ``condition`` and ``mask`` as PNG files
(8- or 16-bit, grey or RGB; mask white = known) and the other fields as form fields; its answer holds one PNG
per row in the upload's bit depth (``{"png": BASE64}``), with std and samples as .npy.
The answer uses the request's encoding: ``reconstruction`` (the mean when K > 1), with ``std`` and
``samples`` when K > 1, in the user's units, and ``meta`` (sampler, steps, w, K, seed, NFE, rows, and the
seconds spent queued and computing). Row i of a request draws from the streams of (seed, i): an answer
is what ``cfgdiff.load(CKPT).reconstruct(condition, mask, seed=seed, ...)`` returns for the same input, whatever
it was batched with (``run_batch`` runs the rows of many requests in one sampler call per sampler setting).

Errors are ``RequestError(status, field, message)``: 400 for what cannot be decoded, 413 for a body over the
limit, 422 for a well-formed request the model cannot take (shape, channels, mask values, NaN where known,
steps or K out of range). A request not answered within ``timeout_s`` (or the service's default) gets 504 and
is cancelled: if its turn has not come, it is never computed (``cfgdiff.batcher``).
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .api import Reconstructor, as_nchw, check_mask_channels
from .config import METHODS
from .errors import InputError
from .validate import check_observations

MAX_SAMPLES = 64  # K per request
MAX_ROWS = 64  # fields per request
MAX_TIMEOUT_S = 3600.0
FIELDS = ("condition", "mask", "num_samples", "steps", "w", "seed", "method", "timeout_s")


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and a message naming the ``field``."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def body(self) -> bytes:
        return json.dumps({"error": str(self), "field": self.field}).encode()


@dataclass
class Job:
    """One decoded, validated request."""

    cond: np.ndarray  # (n, C_c, H, W) float32, user units, NaN = missing
    mask: np.ndarray | None  # (n, 1 or C, H, W) float32
    num_samples: int
    steps: int
    w: float
    seed: int
    method: str
    encoding: str  # "npy", "list" or "png": how the answer is encoded
    image_dtype: str | None = None  # the uploaded PNG's dtype (uint8/uint16), for a PNG answer
    timeout_s: float | None = None  # None: the service's default
    received: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set when the request timed out: skip it if its turn has not come

    def key(self) -> tuple:
        """Requests with equal keys run in one sampler call."""
        return (self.cond.shape[1:], None if self.mask is None else self.mask.shape[1], self.num_samples, self.steps,
                self.w, self.method)


def _array(value: Any, name: str) -> tuple[np.ndarray, str]:
    if isinstance(value, _Image):
        return value.array, "png"
    if isinstance(value, dict) and "npy" in value:
        try:
            raw = base64.b64decode(value["npy"], validate=True)
            a = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, TypeError, OSError, EOFError) as e:
            raise RequestError(400, name, f"not a base64 .npy ({str(e).splitlines()[0][:120]})") from None
        return a, "npy"
    if isinstance(value, list):
        try:
            a = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise RequestError(400, name, "nested lists must be rectangular lists of numbers (null = missing)") from None
        return a, "list"
    raise RequestError(400, name, 'expected {"npy": "<base64>"} or nested lists of numbers')


def _number(doc: dict, name: str, kind: type, default, lo, hi):
    v = doc.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise RequestError(422, name, f"expected {'an integer' if kind is int else 'a number'}, got {v!r}")
    v = kind(v)
    if not lo <= v <= hi:
        raise RequestError(422, name, f"must be in [{lo}, {hi}], got {v}")
    return v


def _multipart(body: bytes, content_type: str) -> dict[str, Any]:
    """multipart/form-data: ``condition`` and ``mask`` PNG files, the other fields as text (parsed as JSON)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    from .formats.images import binarise, decode_png

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise RequestError(400, "body", "a multipart/form-data body without parts (or without its boundary)")
    doc: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if name in ("condition", "mask"):
            try:
                a = decode_png(data, name)
            except InputError as e:
                raise RequestError(400, name, str(e).removeprefix(f"{name}: ")) from None
            if name == "mask":
                try:
                    a = binarise(a[..., :1], "mask")
                except InputError as e:
                    raise RequestError(422, "mask", str(e).removeprefix("mask: ")) from None
            doc[name] = _Image(a.transpose(2, 0, 1)[None], str(a.dtype))
        elif name:
            text = data.decode(errors="replace")
            try:
                doc[name] = json.loads(text)
            except ValueError:
                doc[name] = text
    return doc


@dataclass
class _Image:
    array: np.ndarray  # (1, C, H, W)
    dtype: str


def decode_request(body: bytes, rec: Reconstructor, max_bytes: int, content_type: str = "application/json") -> Job:
    """Parse and validate one request body against the loaded model; raises ``RequestError``."""
    if len(body) > max_bytes:
        raise RequestError(413, "body", f"{len(body)} bytes is over the limit of {max_bytes} (--max-request-mb)")
    if content_type.lower().startswith("multipart/form-data"):
        doc = _multipart(body, content_type)
    else:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, "body", f"not JSON ({str(e)[:120]})") from None
    if not isinstance(doc, dict) or "condition" not in doc:
        raise RequestError(422 if isinstance(doc, dict) else 400, "condition", "required: the observed field(s)")
    unknown = set(doc) - set(FIELDS)
    if unknown:
        raise RequestError(422, sorted(unknown)[0], f"unknown field (expected {', '.join(FIELDS)})")
    mc, s = rec.config.model, rec.config.sampler
    T = rec.config.schedule.num_timesteps
    cond, enc = _array(doc["condition"], "condition")
    mask = _array(doc["mask"], "mask")[0] if doc.get("mask") is not None else None
    one = lambda a: a[None, None] if a is not None and a.ndim == 2 else a  # (H, W): one field
    try:
        cond = as_nchw(one(cond), mc.cond_channels, "condition").astype(np.float32)
        mask = as_nchw(one(mask), None, "mask").astype(np.float32) if mask is not None else None
        if mask is not None:
            check_mask_channels(mask.shape[1], mc.mask_channels, mc.in_channels, "mask")
            if mask.shape[0] != cond.shape[0] or mask.shape[2:] != cond.shape[2:]:
                raise InputError(f"mask is {mask.shape} but condition is {cond.shape}: same N, H, W needed")
    except InputError as e:
        raise RequestError(422, "mask" if str(e).startswith("mask") else "condition", str(e)) from None
    if not 1 <= len(cond) <= MAX_ROWS:
        raise RequestError(422, "condition", f"holds {len(cond)} fields; send 1 to {MAX_ROWS} per request")
    if cond.shape[2:] != tuple(mc.image_size):
        H, W = mc.image_size
        raise RequestError(422, "condition", f"fields are {cond.shape[2]}x{cond.shape[3]}; this model takes {H}x{W}")
    if mask is not None and not np.isin(mask, (0.0, 1.0)).all():
        raise RequestError(422, "mask", f"must hold only 0 and 1, found {mask[~np.isin(mask, (0.0, 1.0))].flat[0]!r}")
    try:
        check_observations(cond, mask, "condition", offset=rec.ckpt.normalization.condition.offset,
                           scale=rec.ckpt.normalization.condition.scale)
    except InputError as e:
        raise RequestError(422, "condition", str(e).removeprefix("condition: ")) from None
    if mask is None and not np.isnan(cond).any():
        raise RequestError(422, "mask", "no mask and no NaN in the condition: nothing says which pixels are known")
    method = doc.get("method") or s.method
    if method not in METHODS:
        raise RequestError(422, "method", f"expected one of {', '.join(METHODS)}, got {method!r}")
    return Job(cond=cond, mask=mask, num_samples=_number(doc, "num_samples", int, 1, 1, MAX_SAMPLES),
               steps=_number(doc, "steps", int, s.steps, 1, T), w=_number(doc, "w", float, s.w, 0.0, 100.0),
               seed=_number(doc, "seed", int, 0, 0, 2**63 - 1), method=method, encoding=enc,
               image_dtype=doc["condition"].dtype if enc == "png" else None,
               timeout_s=_number(doc, "timeout_s", float, None, 0.001, MAX_TIMEOUT_S))


def run_batch(rec: Reconstructor, jobs: list[Job]) -> list[dict[str, Any]]:
    """Reconstruct many requests: one sampler call per group of equal settings; one answer per job, in order
    (``None`` for a job cancelled before its group's turn)."""
    answers: list[dict[str, Any] | None] = [None] * len(jobs)
    groups: dict[tuple, list[int]] = {}
    for j, job in enumerate(jobs):
        groups.setdefault(job.key(), []).append(j)
    for members in groups.values():
        members = [j for j in members if not jobs[j].cancelled]
        if not members:
            continue
        first = jobs[members[0]]
        t0 = time.perf_counter()
        cond = np.concatenate([jobs[j].cond for j in members])
        mask = np.concatenate([jobs[j].mask for j in members]) if first.mask is not None else None
        seeds = [jobs[j].seed for j in members for _ in range(len(jobs[j].cond))]
        index = [i for j in members for i in range(len(jobs[j].cond))]
        s = rec.sampler_config(steps=first.steps, w=first.w, method=first.method)
        out = rec.run_rows(cond, mask, s, num_samples=first.num_samples, seeds=seeds, index=index)
        t1 = time.perf_counter()
        a = 0
        for j in members:
            n = len(jobs[j].cond)
            answers[j] = {"mean": out.mean[a:a + n], "std": out.std[a:a + n], "samples": out.samples[a:a + n],
                          "meta": {"method": s.method, "steps": s.steps, "w": s.w, "num_samples": first.num_samples,
                                   "seed": jobs[j].seed, "nfe": out.num_model_calls, "rows": n,
                                   "batched_rows": len(cond), "queued_s": t0 - jobs[j].received,
                                   "compute_s": t1 - t0}}
            a += n
    return answers


def _encode(a: np.ndarray, encoding: str, image_dtype: str | None = None) -> Any:
    if encoding == "png" and image_dtype is not None:  # one PNG per row, in the upload's bit depth
        from .formats.images import encode_png
        return [{"png": base64.b64encode(encode_png(x, np.dtype(image_dtype))).decode()} for x in a]
    if encoding == "list":
        return a.tolist()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"npy": base64.b64encode(buf.getvalue()).decode()}


def encode_answer(job: Job, answer: dict[str, Any]) -> bytes:
    """The JSON answer, arrays (N, C, H, W) in the request's encoding."""
    doc = {"reconstruction": _encode(answer["mean"], job.encoding, job.image_dtype), "meta": answer["meta"]}
    if job.num_samples > 1:  # std and samples are floats: .npy for a PNG request
        enc = "npy" if job.encoding == "png" else job.encoding
        doc["std"] = _encode(answer["std"], enc)
        doc["samples"] = _encode(answer["samples"], enc)
    return json.dumps(doc).encode()


def model_info(rec: Reconstructor) -> dict[str, Any]:
    """What ``GET /info`` says: the model, its sizes and channels, the sampler defaults, the normalisation."""
    mc, cfg = rec.config.model, rec.config
    return {"image_size": list(mc.image_size), "in_channels": mc.in_channels, "cond_channels": mc.cond_channels,
            "mask_channels": mc.mask_channels, "prediction": mc.prediction, "preset": getattr(mc, "preset", None),
            "sampler": {k: v for k, v in cfg.sampler.__dict__.items()}, "num_timesteps": cfg.schedule.num_timesteps,
            "normalization": rec.ckpt.normalization.to_dict(), "limits": {"rows": MAX_ROWS, "num_samples": MAX_SAMPLES}}
