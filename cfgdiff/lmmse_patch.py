"""Patch-wise LMMSE, for fields whose one covariance is too large (C*H*W above ``lmmse.MAX_DIM``, about
64x64x1) or has fewer training rows than values to estimate it from (``window_for``).

The full D x D covariance of a 128x128 field has 2.7e8 entries and each distinct mask needs a Cholesky
factorisation of up to D^3 / 3 = 1.5e12 flops, so it is not fitted. Instead one covariance is fitted on
``patch`` x ``patch`` windows of the training fields (all window positions pooled, i.e. the statistics are
taken as stationary: right for the GRF and turbulence demos, an approximation for fields whose statistics
depend on position), and a field is reconstructed window by window, each window's LMMSE given its own known
pixels (``lmmse.LinearGaussian``). The windows are fused per pixel by the raised-cosine weights of tiled
sampling (``tiling.blend_weights``) times each window's conditional precision there: a window's border pixels,
which see the least context, count the least, and so does a window that sees no known pixel near a pixel
(without the precision factor, missing halves scored 3-4x full LMMSE's MSE). The fused std is
sqrt(1 / sum_j w_j / var_j), the precision-weighted combination of the windows' variances, an approximation
to the fused estimate's error. Each pixel's estimate uses only the known pixels of its windows, so large
holes lose context (measured against the exact Bayes optimum in bench/RESULTS.md, "Patch-wise LMMSE").
Windows of all rows go through one ``predict`` call, so windows sharing a mask share a factorisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .lmmse import MAX_DIM, LinearGaussian
from .tiling import blend_weights, windows

PATCH = 64  # window side for one channel (C*PATCH^2 = 4096 = lmmse.MAX_DIM; fewer channels-times-pixels shrink it)


def patch_plan(shape: tuple[int, int, int], patch: int = PATCH, overlap: int | None = None
               ) -> tuple[tuple[int, int], int] | str:
    """Window (th, tw) and overlap for (C, H, W) fields, or why no window fits the covariance limit."""
    C, H, W = shape
    s = patch
    while s > 8 and C * s * s > MAX_DIM:
        s -= 8
    th, tw = min(H, s), min(W, s)
    if C * th * tw > MAX_DIM:
        return f"LMMSE: even {th}x{tw} windows of {C} channels exceed the covariance limit of {MAX_DIM} values"
    ov = min(th, tw) // 4 if overlap is None else overlap
    if not 0 <= ov < min(th, tw):
        raise ValueError(f"LMMSE window overlap must be in [0, {min(th, tw)}), got {ov}")
    return (th, tw), ov


def window_for(shape: tuple[int, int, int], n_rows: int, rows_per_value: float = 2.0) -> int | None:
    """The window side for ``n_rows`` training fields of ``shape``, or None for one full-field covariance.

    A D x D sample covariance from fewer than D rows is singular and leans on its shrinkage: on the 64x64 GRF
    demo with 960 training fields, full-field LMMSE scored 1.4-2.1x the Bayes optimum's MSE where 32 px
    windows scored 1.1-1.4x (bench/RESULTS.md). So the full covariance is used when it fits the limit and the
    rows are at least D; otherwise the largest window (multiple of 8, at most ``PATCH``) whose windows give at
    least ``rows_per_value`` rows per value."""
    C, H, W = shape
    if C * H * W <= MAX_DIM and n_rows >= C * H * W:
        return None
    for side in range(PATCH, 7, -8):
        plan = patch_plan(shape, side)
        if isinstance(plan, str):
            break
        (th, tw), ov = plan
        if len(windows(H, W, (th, tw), ov)) * n_rows >= rows_per_value * C * th * tw:
            return side
    return 8


@dataclass
class PatchLinearGaussian:
    """LMMSE on (C, H, W) fields through overlapping windows of one fitted window covariance."""

    local: LinearGaussian  # mean and covariance of one window, shape (C, th, tw)
    shape: tuple[int, int, int]  # the fields'
    overlap: int

    @property
    def window(self) -> tuple[int, int]:
        return self.local.shape[1], self.local.shape[2]

    @property
    def rows(self) -> int:  # windows the fit used
        return self.local.rows

    @property
    def shrinkage(self) -> float:
        return self.local.shrinkage

    @classmethod
    def fit(cls, batches: Iterable[np.ndarray], shape: tuple[int, int, int], patch: int = PATCH,
            overlap: int | None = None) -> PatchLinearGaussian:
        """Fit the window covariance on every window (the grid ``predict`` uses) of streamed (B, C, H, W) batches,
        through ``LinearGaussian.fit`` (shrinkage chosen on held-out windows)."""
        plan = patch_plan(shape, patch, overlap)
        if isinstance(plan, str):
            raise ValueError(plan)
        (th, tw), ov = plan
        wins = windows(shape[1], shape[2], (th, tw), ov)

        def cut(batches):
            for b in batches:
                b = np.asarray(b, np.float64)
                if tuple(b.shape[1:]) != tuple(shape):
                    raise ValueError(f"LMMSE fit: fields are {tuple(b.shape[1:])}, expected {tuple(shape)}")
                yield _cut(b, wins, th, tw)

        return cls(LinearGaussian.fit(cut(batches)), tuple(shape), ov)

    def _fuse(self, mu: np.ndarray, sd: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Window predictions (n * n_windows, C, th, tw), row-major, fused into (n, C, H, W) fields."""
        C, H, W = self.shape
        th, tw = self.window
        wins, wts = blend_weights(H, W, (th, tw), self.overlap)
        wts = wts.numpy()[:, None]  # (n_windows, 1, th, tw)
        mu = mu.reshape(n, len(wins), C, th, tw).astype(np.float64)
        var = sd.reshape(n, len(wins), C, th, tw).astype(np.float64) ** 2
        floor = 1e-12 * float(np.mean(np.diag(self.local.cov)))
        num, den = np.zeros((n, C, H, W)), np.zeros((n, C, H, W))
        for j, (y, x) in enumerate(wins):
            w = wts[j] / (var[:, j] + floor)  # precision-weighted: a window that sees no known pixel near p counts little
            num[:, :, y:y + th, x:x + tw] += w * mu[:, j]
            den[:, :, y:y + th, x:x + tw] += w
        return num / den, np.sqrt(1.0 / den)

    def predict(self, cond: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and std (N, C, H, W) float32, as ``LinearGaussian.predict``; known values exact."""
        n, (_, H, W) = len(cond), self.shape
        if tuple(cond.shape[1:]) != self.shape:
            raise ValueError(f"LMMSE: fields are {tuple(cond.shape[1:])}, the fit is {self.shape}")
        th, tw = self.window
        wins = windows(H, W, (th, tw), self.overlap)
        m = np.asarray(mask)
        mu, sd = self.local.predict(_cut(np.asarray(cond), wins, th, tw), _cut(m, wins, th, tw))
        mean, std = self._fuse(mu, sd, n)
        known = np.broadcast_to(m > 0, mean.shape)
        x = np.nan_to_num(np.asarray(cond, np.float64))
        return np.where(known, x, mean).astype(np.float32), np.where(known, 0.0, std).astype(np.float32)

    def predict_op(self, cond: np.ndarray, op) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and std given y = op.A(cond) for a local pooling operator (``degrade.PoolOperator``):
        each window sees the observations of its own pixels, which needs windows aligned to the pooling grid."""
        C, H, W = self.shape
        th, tw = self.window
        wins = windows(H, W, (th, tw), self.overlap)
        f = int(getattr(op, "factor", 0))
        if f < 1 or th % f or tw % f or any(y % f or x % f for y, x in wins):
            raise ValueError(f"patch-wise LMMSE needs windows aligned to the operator's grid: {th}x{tw} windows "
                             f"overlapping by {self.overlap} do not align with pooling factor {f or 'unknown'}")
        mu, sd = self.local.predict_op(_cut(np.asarray(cond), wins, th, tw), op)
        mean, std = self._fuse(mu, sd, len(cond))
        return mean.astype(np.float32), std.astype(np.float32)


def _cut(a: np.ndarray, wins: list[tuple[int, int]], th: int, tw: int) -> np.ndarray:
    """(N, C, H, W) -> (N * n_windows, C, th, tw), row-major (row i's windows are i*n..(i+1)*n)."""
    out = np.stack([a[:, :, y:y + th, x:x + tw] for y, x in wins], 1)
    return out.reshape(-1, *out.shape[2:])
