"""The best linear estimator: LMMSE with a covariance fitted on the training set.

For a field x in R^D (D = C H W, flattened) with mean m and covariance S, the linear estimator of
the missing values U from the known values K that minimises the mean squared error is the Gaussian
conditional mean (kriging with the empirical covariance; e.g. Rasmussen & Williams 2006, eq. A.6):

    mu_U = m_U + S_UK S_KK^-1 (x_K - m_K),    S_U|K = S_UU - S_UK S_KK^-1 S_KU.

It is Bayes-optimal for Gaussian data and the best affine estimator for any data, which makes it the
estimator a diffusion model must beat on real fields. The fit streams over the training rows in
float64 (shifted sums, so the scatter does not cancel catastrophically), holds out every 10th row,
and picks the shrinkage S_lambda = (1 - lambda) S + lambda diag(S) that maximises the Gaussian
likelihood of the held-out rows, then refits on all rows. Rows sharing a mask share one Cholesky
factorisation of S_KK. Dense linear observations (super-resolution: y = A x with A average pooling)
use the same conditional with S_UK, S_KK replaced by S A^T, A S A^T (``predict_linear``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

MAX_DIM = 4096  # C*H*W above this (about 64x64x1): the D x D covariance and its solves are too costly
SHRINKAGES = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
HOLDOUT_EVERY = 10  # every 10th streamed row chooses the shrinkage


def operator_matrix(op, shape: tuple[int, ...]) -> np.ndarray:
    """The (M, D) matrix of the linear map ``op.A`` on flattened fields of ``shape``."""
    d = int(np.prod(shape))
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    return op.A(basis).reshape(d, -1).T.numpy()


class _Moments:
    """Streaming float64 mean and scatter about a fixed shift (the first row seen)."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def add(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        if self.shift is None:
            self.shift = x[0].copy()
            self.s1, self.s2 = np.zeros_like(self.shift), np.zeros((len(self.shift),) * 2)
        d = x - self.shift
        self.n += len(d)
        self.s1 += d.sum(0)
        self.s2 += d.T @ d

    def merged(self, other: _Moments) -> _Moments:
        out = _Moments()
        out.n, out.shift = self.n + other.n, self.shift
        delta = other.shift - self.shift  # re-centre the other's sums on this shift
        out.s1 = self.s1 + other.s1 + other.n * delta
        out.s2 = (self.s2 + other.s2 + np.outer(other.s1, delta) + np.outer(delta, other.s1)
                  + other.n * np.outer(delta, delta))
        return out

    def mean(self) -> np.ndarray:
        return self.shift + self.s1 / self.n

    def second_moment_about(self, mu: np.ndarray) -> np.ndarray:
        """(1/n) sum (x - mu)(x - mu)^T."""
        d = self.s1 / self.n
        e = self.shift - mu
        return self.s2 / self.n + np.outer(d, e) + np.outer(e, d) + np.outer(e, e)

    def cov(self) -> np.ndarray:
        d = self.s1 / self.n
        return (self.s2 - self.n * np.outer(d, d)) / max(self.n - 1, 1)


def shrink(cov: np.ndarray, lam: float) -> np.ndarray:
    return (1.0 - lam) * cov + lam * np.diag(np.diag(cov))


def _nll(cov: np.ndarray, second: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean Gaussian negative log-likelihood (up to constants) of rows with second moment ``second``
    (about the mean). With the centred rows themselves (n < D), tr(S^-1 second) = |L^-1 R^T|_F^2 / n costs
    a triangular solve instead of S^-1, 3x cheaper than the inverse at D = 4096."""
    try:
        L = torch.linalg.cholesky(torch.from_numpy(cov))
    except RuntimeError:  # not positive definite (too few rows for lambda = 0)
        return float("inf")
    logdet = 2.0 * torch.log(torch.diagonal(L)).sum()
    if rows is not None:
        z = torch.linalg.solve_triangular(L, torch.from_numpy(rows).T, upper=False)
        return float(0.5 * (logdet + (z * z).sum() / len(rows)))
    inv = torch.cholesky_inverse(L)
    return float(0.5 * (logdet + (inv * torch.from_numpy(second)).sum()))


@dataclass
class LinearGaussian:
    """Mean and covariance of flattened (C, H, W) fields; ``predict`` gives the LMMSE reconstruction."""

    mean: np.ndarray  # (D,) float64
    cov: np.ndarray  # (D, D) float64
    shape: tuple[int, int, int]
    rows: int = 0  # rows the fit used (0: given, not fitted)
    shrinkage: float = 0.0
    _precision: torch.Tensor | None = field(default=None, repr=False, compare=False)  # S^-1, when first needed

    @classmethod
    def fit(cls, batches: Iterable[np.ndarray], shrinkages: tuple[float, ...] = SHRINKAGES) -> LinearGaussian:
        """Stream (B, C, H, W) batches; choose the shrinkage on every ``HOLDOUT_EVERY``-th row."""
        fit, hold, shape, seen, kept = _Moments(), _Moments(), None, 0, []
        for b in batches:
            b = np.asarray(b, dtype=np.float64)
            if not np.isfinite(b).all():
                raise ValueError("LMMSE fit: the training targets hold NaN or inf")
            shape = tuple(b.shape[1:])
            flat = b.reshape(len(b), -1)
            is_hold = (np.arange(seen, seen + len(b)) % HOLDOUT_EVERY) == HOLDOUT_EVERY - 1
            fit.add(flat[~is_hold])
            hold.add(flat[is_hold])
            if kept is not None:  # the held-out rows themselves while fewer than D (see ``_nll``)
                kept.append(flat[is_hold])
                kept = kept if sum(map(len, kept)) < flat.shape[1] else None
            seen += len(b)
        if fit.n < 2 or hold.n < 1:
            raise ValueError(f"LMMSE fit needs at least {HOLDOUT_EVERY} training rows, got {seen}")
        mu, cov = fit.mean(), fit.cov()
        second = hold.second_moment_about(mu)
        jitter = 1e-10 * float(np.mean(np.diag(cov))) * np.eye(len(mu))
        rows = np.concatenate(kept) - mu if kept is not None else None
        scores = [_nll(shrink(cov, lam) + jitter, second, rows) for lam in shrinkages]
        lam = shrinkages[int(np.argmin(scores))]
        both = fit.merged(hold)
        return cls(both.mean(), shrink(both.cov(), lam), shape, rows=both.n, shrinkage=lam)

    def predict(self, cond: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and std (N, C, H, W) float32 of fields given their known values.

        ``mask`` is (N, 1, H, W) (per pixel) or (N, C, H, W) (per channel), 1 = known; known values are
        returned exactly, with std 0. Rows sharing a mask share one Cholesky factorisation."""
        n, (C, H, W) = len(cond), self.shape
        if tuple(cond.shape[1:]) != self.shape:
            raise ValueError(f"LMMSE: fields are {tuple(cond.shape[1:])}, the fit is {self.shape}")
        known = np.broadcast_to(np.asarray(mask) > 0, (n, C, H, W)).reshape(n, -1)
        x = np.nan_to_num(np.asarray(cond, dtype=np.float64)).reshape(n, -1)
        mean_out = np.where(known, x, self.mean)
        std_out = np.where(known, 0.0, np.sqrt(np.diag(self.cov)))
        _, first, inverse = np.unique(known, axis=0, return_index=True, return_inverse=True)
        for g, row in enumerate(first):
            k = known[row]
            u = ~k
            rows = np.flatnonzero(inverse.reshape(-1) == g)
            if not k.any() or not u.any():
                continue
            r = torch.from_numpy(x[np.ix_(rows, k)] - self.mean[k]).T  # (|K|, rows)
            mu, var = self._conditional(torch.from_numpy(np.flatnonzero(k)), torch.from_numpy(np.flatnonzero(u)), r)
            mean_out[np.ix_(rows, u)] = (self.mean[u][:, None] + mu.numpy()).T
            std_out[np.ix_(rows, u)] = np.sqrt(np.clip(var.numpy(), 0.0, None))[None, :]
        return mean_out.reshape(n, C, H, W).astype(np.float32), std_out.reshape(n, C, H, W).astype(np.float32)

    def _conditional(self, ki: torch.Tensor, ui: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centred conditional mean (|U|, rows) and variance (|U|,) given centred known values r (|K|, rows).

        Factors the smaller block: S_KK (covariance form) or Q_UU of the precision Q = S^-1, computed once
        (Rue & Held 2005, Thm 2.5: mu_U = -Q_UU^-1 Q_UK r, Var_U = Q_UU^-1), as ``kriging`` does."""
        cov = torch.from_numpy(self.cov)
        eye = lambda m: torch.eye(m, dtype=torch.float64)
        if len(ki) <= len(ui):
            s_kk = cov[ki][:, ki]
            L = torch.linalg.cholesky(s_kk + 1e-10 * s_kk.diagonal().mean() * eye(len(ki)))
            a = torch.linalg.solve_triangular(L, cov[ki][:, ui], upper=False)  # L^-1 S_KU
            b = torch.linalg.solve_triangular(L, r, upper=False)
            return a.T @ b, cov.diagonal()[ui] - (a * a).sum(0)
        if self._precision is None:
            self._precision = torch.cholesky_inverse(torch.linalg.cholesky(cov + 1e-10 * cov.diagonal().mean() * eye(len(cov))))
        q = self._precision
        L = torch.linalg.cholesky(q[ui][:, ui])
        Linv = torch.linalg.solve_triangular(L, eye(len(ui)), upper=False)
        return -torch.cholesky_solve(q[ui][:, ki] @ r, L), (Linv * Linv).sum(0)

    def predict_op(self, cond: np.ndarray, op) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and std given y = op.A(cond) (``degrade.operator_for``, e.g. super-resolution's
        pooling), with the matrix A built column by column from ``op.A``."""
        return self.predict_linear(op.A(torch.from_numpy(np.asarray(cond, np.float64))).reshape(len(cond), -1).numpy(),
                                   operator_matrix(op, self.shape))

    def predict_linear(self, y: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and std (N, C, H, W) given exact linear observations y = A x, for y (N, M)
        and A (M, D), e.g. average pooling for super-resolution:

            mu = m + S A^T (A S A^T)^-1 (y - A m),    Cov = S - S A^T (A S A^T)^-1 A S.
        """
        n = len(y)
        S, a = torch.from_numpy(self.cov), torch.from_numpy(np.asarray(A, np.float64))
        sat = S @ a.T  # (D, M)
        g = a @ sat
        g = g + 1e-10 * g.diagonal().mean() * torch.eye(len(g), dtype=torch.float64)
        L = torch.linalg.cholesky(g)
        k = torch.linalg.solve_triangular(L, sat.T, upper=False)  # L^-1 A S, (M, D)
        r = torch.from_numpy(np.asarray(y, np.float64).reshape(n, -1)) - a @ torch.from_numpy(self.mean)
        b = torch.linalg.solve_triangular(L, r.T, upper=False)
        mean = torch.from_numpy(self.mean)[None, :] + (k.T @ b).T
        std = torch.sqrt(torch.clamp(S.diagonal() - (k * k).sum(0), min=0.0)).expand(n, -1)
        shape = (n, *self.shape)
        return mean.reshape(shape).numpy().astype(np.float32), std.reshape(shape).numpy().astype(np.float32)
