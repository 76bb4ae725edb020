"""A small client for ``cfgdiff serve`` (standard library only)::

    from cfgdiff.client import Client
    out = Client("http://127.0.0.1:8000").reconstruct(cond, mask, num_samples=4, seed=0)
    out.mean, out.std, out.meta

Retries: a request is idempotent (same input and seed, same answer), so ``reconstruct`` retries on a
connection error or a 5xx answer (a replica that died mid-batch and is being replaced) up to ``retries``
times with a growing pause; a 4xx answer is the request's own fault and raises ``ServiceError`` at once, and
so does 504 (the request's ``timeout_s`` passed: the service cancelled it, and a retry would wait as long).
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np


class ServiceError(RuntimeError):
    """An error answer: HTTP ``status`` and the service's message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class Answer:
    mean: np.ndarray  # (N, C, H, W): the reconstruction (the mean of K samples when K > 1)
    std: np.ndarray | None  # (N, C, H, W) with K > 1
    samples: np.ndarray | None  # (N, K, C, H, W) with K > 1
    meta: dict[str, Any]  # sampler, steps, w, K, seed, NFE, rows, queued_s, compute_s


def _npy(a: np.ndarray) -> dict[str, str]:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"npy": base64.b64encode(buf.getvalue()).decode()}


def _array(v) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(v["npy"])), allow_pickle=False) if isinstance(v, dict) else np.asarray(v)


class Client:
    def __init__(self, url: str, timeout: float = 300.0, retries: int = 3):
        self.url, self.timeout, self.retries = url.rstrip("/"), timeout, retries

    def _request(self, path: str, body: bytes | None = None) -> dict:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                text = e.read().decode(errors="replace")
                try:
                    text = json.loads(text).get("error", text)
                except ValueError:
                    pass
                if e.code < 500 or e.code == 504 or attempt == self.retries:
                    raise ServiceError(e.code, text) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == self.retries:
                    raise
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def health(self) -> dict:
        return self._request("/healthz")

    def info(self) -> dict:
        return self._request("/info")

    def reconstruct(self, cond: np.ndarray, mask: np.ndarray | None = None, *, num_samples: int = 1, steps: int | None = None,
                    w: float | None = None, seed: int = 0, method: str | None = None, timeout_s: float | None = None,
                    route: str = "/reconstruct") -> Answer:
        """``cond`` (H, W), (N, H, W) or (N, C, H, W) in your units, NaN = missing; ``mask`` likewise, 1 = known.
        ``timeout_s``: the service answers 504 (``ServiceError``) and cancels the request after this long."""
        doc = {"condition": _npy(np.asarray(cond, np.float32)), "num_samples": num_samples, "steps": steps, "w": w,
               "seed": seed, "method": method, "timeout_s": timeout_s}
        if mask is not None:
            doc["mask"] = _npy(np.asarray(mask, np.float32))
        out = self._request(route, json.dumps(doc).encode())
        return Answer(_array(out["reconstruction"]), _array(out["std"]) if "std" in out else None,
                      _array(out["samples"]) if "samples" in out else None, out["meta"])
