"""Offline demo data: Gaussian random fields with an exact covariance, smooth shapes, and decaying
2-D turbulence (``turbulence.py``, non-Gaussian).

Gaussian random fields live on the H x W torus with power spectrum P(k) ~ (|k|^2 + k0^2)^(-alpha/2):
x = F^-1 diag(sqrt P) F z with z ~ N(0, I), so Cov(x) is circulant with first row F^-1 P,
normalised to unit variance. Because the covariance is exact, the Bayes-optimal reconstruction
(the kriging posterior) of any mask is known in closed form (``kriging``).
"""

from __future__ import annotations

import numpy as np


def _spectrum(H: int, W: int, alpha: float, k0: float) -> np.ndarray:
    ky, kx = np.meshgrid(np.fft.fftfreq(H) * H, np.fft.fftfreq(W) * W, indexing="ij")
    P = (kx**2 + ky**2 + k0**2) ** (-alpha / 2)
    c0 = np.fft.ifft2(P).real[0, 0]
    return P / c0  # unit marginal variance


def grf_covariance(H: int, W: int, alpha: float = 4.0, k0: float = 1.0) -> np.ndarray:
    """Exact (H W) x (H W) covariance of the demo field, float64."""
    c = np.fft.ifft2(_spectrum(H, W, alpha, k0)).real  # (H, W) circulant first row
    iy, ix = np.divmod(np.arange(H * W), W)
    return c[(iy[:, None] - iy[None, :]) % H, (ix[:, None] - ix[None, :]) % W]


def grf_model(H: int, W: int, alpha: float = 4.0, k0: float = 1.0, mean: float = 0.0):
    """The demo field as a ``kriging.StationaryGaussian``: its exact posterior at any size, without the (HW)^2 matrix."""
    from .kriging import StationaryGaussian

    return StationaryGaussian(_spectrum(H, W, alpha, k0), mean)


def gaussian_random_fields(n: int, H: int = 32, W: int = 32, alpha: float = 4.0, k0: float = 1.0,
                           seed: int = 0) -> np.ndarray:
    """n fields (n, 1, H, W) float32, zero mean, unit variance, covariance ``grf_covariance``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, H, W))
    x = np.fft.ifft2(np.sqrt(_spectrum(H, W, alpha, k0)) * np.fft.fft2(z)).real
    return x[:, None].astype(np.float32)


def smooth_shapes(n: int, H: int = 32, W: int = 32, seed: int = 0) -> np.ndarray:
    """n images (n, 1, H, W) in [0, 1]: 2-4 soft ellipses over a smooth gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    out = np.empty((n, 1, H, W), np.float32)
    for i in range(n):
        img = 0.3 * (rng.uniform(-1, 1) * (xx - 0.5) + rng.uniform(-1, 1) * (yy - 0.5)) + 0.3
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(0.15, 0.85, 2)
            ry, rx = rng.uniform(0.08, 0.3, 2)
            th = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u, v = dx * np.cos(th) + dy * np.sin(th), -dx * np.sin(th) + dy * np.cos(th)
            d = (u / rx) ** 2 + (v / ry) ** 2
            img = img + rng.uniform(0.3, 0.7) / (1 + np.exp((d - 1) * 8))
        out[i, 0] = np.clip(img, 0, 1)
    return out


def kriging(x: np.ndarray, mask: np.ndarray, cov: np.ndarray, mean: float = 0.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior of a Gaussian field given its known pixels.

    x, mask: (H, W) (mask 1 = known); cov: (HW, HW). Returns the posterior mean (H, W), equal to x
    where known, and the posterior std (H, W), 0 where known:
    mu_U = m + S_UK S_KK^-1 (x_K - m),  S_U|K = S_UU - S_UK S_KK^-1 S_KU.
    """
    k = mask.reshape(-1).astype(bool)
    u = ~k
    flat = x.reshape(-1).astype(np.float64)
    post_mean = flat.copy()
    post_std = np.zeros_like(flat)
    if k.any() and u.any():
        S_kk = cov[np.ix_(k, k)] + 1e-9 * np.eye(int(k.sum()))
        S_uk = cov[np.ix_(u, k)]
        L = np.linalg.cholesky(S_kk)
        A = np.linalg.solve(L, S_uk.T)  # L^-1 S_KU
        b = np.linalg.solve(L, flat[k] - mean)
        post_mean[u] = mean + A.T @ b
        post_std[u] = np.sqrt(np.clip(np.diag(cov)[u] - (A * A).sum(0), 0, None))
    elif u.all():
        post_mean[:] = mean
        post_std[:] = np.sqrt(np.diag(cov))
    return post_mean.reshape(x.shape), post_std.reshape(x.shape)


DEMO_META = "demo.json"
KINDS = ("grf", "shapes", "turbulence")
TURBULENCE_SNAPSHOTS = 32  # snapshots per trajectory


def write_demo(out, kind: str = "grf", n: int = 2048, size: int = 32, seed: int = 0, alpha: float = 4.0,
               k0: float = 1.0, progress=None, fmt: str = "npy") -> dict:
    """Write ``out/target.npy`` and ``out/demo.json`` (kind and the parameters of the exact covariance).

    ``turbulence`` also writes ``out/groups.npy``, the trajectory of each row, for ``convert --groups``.
    ``fmt`` other than npy writes the fields as users keep them instead (``cfgdiff.formats.demo_files``)."""
    import json
    import os
    from pathlib import Path

    from .errors import InputError
    from .formats.demo_files import FORMATS, write_files

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if kind not in KINDS:
        raise InputError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if n < 2 or size < 4:
        raise InputError(f"--n must be >= 2 and --size >= 4, got n={n}, size={size}")
    if kind == "turbulence" and (size % 4 or size < 8):
        raise InputError(f"--size must be a multiple of 4 and >= 8 for turbulence, got {size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "n": n, "size": size, "seed": seed}
    files = {"target": out / "target.npy"}
    if kind == "turbulence":
        from .turbulence import decaying_turbulence, kurtosis

        snaps = min(TURBULENCE_SNAPSHOTS, n)
        x, groups = decaying_turbulence(-(-n // snaps), snaps, size, seed, progress=progress)
        x, groups = x[:n], groups[:n]
        files["groups"] = out / "groups.npy"
        meta.update(snapshots_per_trajectory=snaps, trajectories=int(groups.max()) + 1,
                    vorticity_kurtosis=round(kurtosis(x), 3),
                    note="decaying 2-D turbulence (cfgdiff.turbulence); convert with --groups groups.npy so that "
                         "training and validation never share a trajectory")
    elif kind == "grf":
        x = gaussian_random_fields(n, size, size, alpha, k0, seed)
        meta.update(alpha=alpha, k0=k0, mean=0.0, note="covariance = cfgdiff.demo.grf_covariance(size, size, alpha, k0)")
    else:
        x = smooth_shapes(n, size, size, seed)
    if fmt != "npy":
        files = write_files(out, x, kind, fmt, seed)
        meta.update(format=fmt, files=files)
        (out / DEMO_META).write_text(json.dumps(meta, indent=2))
        return {**files, **meta}
    for name, arr in (("target", x), ("groups", groups if kind == "turbulence" else None)):
        if arr is not None:
            tmp = out / f"{name}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, files[name])
    (out / DEMO_META).write_text(json.dumps(meta, indent=2))
    return {**{k: str(v) for k, v in files.items()}, **meta}
