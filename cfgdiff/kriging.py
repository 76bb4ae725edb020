"""The exact inpainting posterior (kriging) of a stationary Gaussian field on the H x W torus, at any size.

The demo's Gaussian random fields (``demo.gaussian_random_fields``) have a circulant covariance C with
eigenvalues P (the power spectrum), so both C and the precision Q = C^-1 are circulant: their first rows are
ifft2(P) and ifft2(1/P), and any block of either is read off those rows without forming an (HW x HW) matrix.
Given the known pixels K, the unknown pixels U are Gaussian with

* covariance form: mu_U = m + C_UK C_KK^-1 (x_K - m),  Var_U = C_UU - C_UK C_KK^-1 C_KU  (one Cholesky of C_KK);
* precision form (Rue & Held 2005, Thm 2.5): mu_U = m - Q_UU^-1 Q_UK (x_K - m),  Var_U = Q_UU^-1  (one Cholesky of Q_UU).

They are the same posterior; ``krige`` factors whichever block is smaller, so the cost is at most (HW/2)^3 / 3
flops per distinct mask (a few seconds at 128x128), and rows that share a mask share the factorisation.
"""

from __future__ import annotations

import numpy as np
import torch

JITTER = 1e-9  # added to C_KK's diagonal, as in ``demo.kriging`` (C is smooth, C_KK can be near-singular)


class StationaryGaussian:
    """A zero-or-constant-mean Gaussian field on the H x W torus, given by its power spectrum ``P`` (H, W)."""

    def __init__(self, spectrum: np.ndarray, mean: float = 0.0):
        P = np.asarray(spectrum, np.float64)
        if P.ndim != 2 or not (P > 0).all():
            raise ValueError("the spectrum must be a positive (H, W) array")
        self.H, self.W = P.shape
        self.mean = float(mean)
        self.cov_row = torch.from_numpy(np.fft.ifft2(P).real.copy())  # first row of C
        self.prec_row = torch.from_numpy(np.fft.ifft2(1.0 / P).real.copy())  # first row of Q = C^-1

    def _block(self, row: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Rows ``a``, columns ``b`` (flat pixel indices) of the circulant matrix with first row ``row``."""
        dy = (a[:, None] // self.W - b[None, :] // self.W) % self.H
        dx = (a[:, None] % self.W - b[None, :] % self.W) % self.W
        return row[dy, dx]

    def krige(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of fields ``x`` (N, H, W) given their pixels where ``mask`` (N, H, W) is 1.

        The mean equals x where known; the std is 0 there. Rows with the same mask share one factorisation."""
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        known = np.asarray(mask).reshape(len(x), -1) > 0
        if x.shape[1] != self.H * self.W:
            raise ValueError(f"fields of {x.shape[1]} pixels, expected {self.H}x{self.W}")
        mean, std = x.copy(), np.zeros_like(x)
        groups: dict[bytes, list[int]] = {}
        for i, k in enumerate(known):
            groups.setdefault(np.packbits(k).tobytes(), []).append(i)
        for rows in groups.values():
            k = known[rows[0]]
            mu, sd = self._posterior(torch.from_numpy(x[rows][:, k] - self.mean), k)
            mean[np.ix_(rows, ~k)] = mu.numpy() + self.mean
            std[np.ix_(rows, ~k)] = sd.numpy()[None]
        shape = (len(x), self.H, self.W)
        return mean.reshape(shape), std.reshape(shape)

    def _posterior(self, xk: torch.Tensor, known: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Centred posterior mean (n, U) and std (U,) of the unknown pixels from centred known values (n, K)."""
        k = torch.from_numpy(np.flatnonzero(known))
        u = torch.from_numpy(np.flatnonzero(~known))
        if len(u) == 0:
            return xk[:, :0], torch.zeros(0, dtype=torch.float64)
        if len(k) == 0:
            return torch.zeros(len(xk), len(u), dtype=torch.float64), self.cov_row[0, 0].sqrt().expand(len(u))
        if len(k) <= len(u):  # covariance form: factor C_KK
            L = torch.linalg.cholesky(self._block(self.cov_row, k, k) + JITTER * torch.eye(len(k), dtype=torch.float64))
            A = torch.linalg.solve_triangular(L, self._block(self.cov_row, k, u), upper=False)  # L^-1 C_KU
            b = torch.linalg.solve_triangular(L, xk.T, upper=False)  # L^-1 x_K
            var = self.cov_row[0, 0] - (A * A).sum(0)
            return (A.T @ b).T, var.clamp(min=0).sqrt()
        L = torch.linalg.cholesky(self._block(self.prec_row, u, u))  # precision form: factor Q_UU
        r = self._block(self.prec_row, u, k) @ xk.T  # Q_UK x_K, (U, n)
        Linv = torch.linalg.solve_triangular(L, torch.eye(len(u), dtype=torch.float64), upper=False)
        return -torch.cholesky_solve(r, L).T, (Linv * Linv).sum(0).sqrt()  # diag(Q_UU^-1) = col norms of L^-1
