"""The exact inpainting posterior (kriging) of a stationary Gaussian field on the H x W torus, at any size.

The demo's Gaussian random fields (``demo.gaussian_random_fields``) have a circulant covariance C with
eigenvalues P (the power spectrum), so both C and the precision Q = C^-1 are circulant: their first rows are
ifft2(P) and ifft2(1/P), and any block of either is read off those rows without forming an (HW x HW) matrix.
Given the known pixels K, the unknown pixels U are Gaussian with

* covariance form: mu_U = m + C_UK C_KK^-1 (x_K - m),  Var_U = C_UU - C_UK C_KK^-1 C_KU  (one Cholesky of C_KK);
* precision form (Rue & Held 2005, Thm 2.5): mu_U = m - Q_UU^-1 Q_UK (x_K - m),  Var_U = Q_UU^-1  (one Cholesky of Q_UU).

They are the same posterior; ``krige`` factors whichever block is smaller, so the cost is at most (HW/2)^3 / 3
flops per distinct mask (a few seconds at 128x128), and rows that share a mask share the factorisation.

On the torus the posterior is translation-equivariant: shifting the field and its mask by t shifts the posterior
by t, and on a square torus with a symmetric spectrum (the isotropic demo fields) so does transposing. So rows whose
masks are translates or transposes of each other (random boxes of one size, the four halves) share one
factorisation too: each mask is moved to a canonical position (``canonical_shift``) and the result moved back.
"""

from __future__ import annotations

import numpy as np
import torch

JITTER = 1e-9  # added to C_KK's diagonal, as in ``demo.kriging`` (C is smooth, C_KK can be near-singular)
MAX_CANDIDATES = 256  # canonical_shift compares at most this many rolls of a mask


def canonical_shift(known: np.ndarray) -> tuple[int, int]:
    """A shift s(m) of the (H, W) mask m with s(roll(m, t)) = s(m) + t up to a symmetry of m, so that
    roll(m, -s(m)) is the same array for every translate of m on the torus.

    The candidates are the pixels whose periodic 3x3 neighbourhood pattern is the rarest one in m (ties: the
    smallest pattern code), a set that moves with m; the lexicographically smallest of the rolls that bring
    a candidate to (0, 0) is chosen. Masks with more than ``MAX_CANDIDATES`` such pixels (a count translation
    does not change) keep their own position (0, 0): still exact, only not shared."""
    m = np.asarray(known, bool)
    code = np.zeros(m.shape, np.int64)
    for bit, (dy, dx) in enumerate((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
        code |= np.roll(m, (dy, dx), axis=(0, 1)).astype(np.int64) << bit
    values, counts = np.unique(code, return_counts=True)
    rarest = values[np.flatnonzero(counts == counts.min())[0]]  # unique() sorts: the smallest code among ties
    ys, xs = np.nonzero(code == rarest)
    if len(ys) > MAX_CANDIDATES:
        return 0, 0
    rolls = [np.packbits(np.roll(m, (-y, -x), axis=(0, 1))).tobytes() for y, x in zip(ys, xs)]
    best = min(range(len(rolls)), key=rolls.__getitem__)
    return int(ys[best]), int(xs[best])


def _move(a: np.ndarray, move: tuple[bool, int, int]) -> np.ndarray:
    transpose, sy, sx = move
    return np.roll(a.T if transpose else a, (-sy, -sx), axis=(0, 1))


def _move_back(a: np.ndarray, move: tuple[bool, int, int]) -> np.ndarray:
    transpose, sy, sx = move
    a = np.roll(a, (sy, sx), axis=(0, 1))
    return a.T if transpose else a


class StationaryGaussian:
    """A zero-or-constant-mean Gaussian field on the H x W torus, given by its power spectrum ``P`` (H, W)."""

    def __init__(self, spectrum: np.ndarray, mean: float = 0.0):
        P = np.asarray(spectrum, np.float64)
        if P.ndim != 2 or not (P > 0).all():
            raise ValueError("the spectrum must be a positive (H, W) array")
        self.H, self.W = P.shape
        self.mean = float(mean)
        self.symmetric = self.H == self.W and np.array_equal(P, P.T)  # transposing a field keeps its law
        self.cov_row = torch.from_numpy(np.fft.ifft2(P).real.copy())  # first row of C
        self.prec_row = torch.from_numpy(np.fft.ifft2(1.0 / P).real.copy())  # first row of Q = C^-1

    def _block(self, row: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Rows ``a``, columns ``b`` (flat pixel indices) of the circulant matrix with first row ``row``.

        Entry (i, j) is row[(y_i - y_j) mod H, (x_i - x_j) mod W]. The row is tiled to (2H-1, 2W-1), offsets
        -(H-1)..H-1 by -(W-1)..W-1, so that the entry is one gather at p(i) - q(j) with no modulo."""
        H, W = self.H, self.W
        ext = row[torch.arange(-(H - 1), H) % H][:, torch.arange(-(W - 1), W) % W].reshape(-1)
        p = (a // W) * (2 * W - 1) + a % W + (H - 1) * (2 * W - 1) + (W - 1)
        q = (b // W) * (2 * W - 1) + b % W
        return ext[p[:, None] - q[None, :]]

    def krige(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of fields ``x`` (N, H, W) given their pixels where ``mask`` (N, H, W) is 1.

        The mean equals x where known; the std is 0 there. Rows whose masks are equal up to a translation (or a
        transposition, when the law is symmetric) share one factorisation (the module's docstring)."""
        shape = (len(x), self.H, self.W)
        x = np.asarray(x, np.float64)
        if x.size != len(x) * self.H * self.W:
            raise ValueError(f"fields of {x.size // max(len(x), 1)} pixels, expected {self.H}x{self.W}")
        x, known = x.reshape(shape), np.asarray(mask).reshape(shape) > 0
        moves = [self._canonical_move(k) for k in known]
        x = np.stack([_move(r, m) for r, m in zip(x, moves)]).reshape(len(x), -1)
        known = np.stack([_move(k, m) for k, m in zip(known, moves)]).reshape(len(x), -1)
        mean, std = x.copy(), np.zeros_like(x)
        groups: dict[bytes, list[int]] = {}
        for i, k in enumerate(known):
            groups.setdefault(np.packbits(k).tobytes(), []).append(i)
        for rows in groups.values():
            k = known[rows[0]]
            mu, sd = self._posterior(torch.from_numpy(x[rows][:, k] - self.mean), k)
            mean[np.ix_(rows, ~k)] = mu.numpy() + self.mean
            std[np.ix_(rows, ~k)] = sd.numpy()[None]
        return (np.stack([_move_back(r, m) for r, m in zip(mean.reshape(shape), moves)]),
                np.stack([_move_back(r, m) for r, m in zip(std.reshape(shape), moves)]))

    def _canonical_move(self, known: np.ndarray) -> tuple[bool, int, int]:
        """(transpose, sy, sx) taking ``known`` to the canonical form shared by its translates (and transposes,
        when the field's law is symmetric)."""
        move = (False, *canonical_shift(known))
        if self.symmetric:
            moved_t = (True, *canonical_shift(known.T))
            if np.packbits(_move(known, moved_t)).tobytes() < np.packbits(_move(known, move)).tobytes():
                move = moved_t
        return move

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
