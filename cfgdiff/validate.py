"""Checks on observations and targets that every entry point shares (convert, infer, the Python API,
evaluate, the training reader). Each names the first offending row; nothing is "fixed" silently.

Rules: targets are finite everywhere; a condition may be NaN only where it is unknown (mask 0) and is
never +-inf; a known condition value that lies absurdly far outside the training data's range (more
than ``ABSURD`` half-ranges in normalised units, e.g. 1e30 for a field in [0, 1]) is refused rather
than fed to the network.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

ABSURD = 1e3  # |normalised value| beyond this at a known pixel: a unit or fill-value mistake, not data


def _first_row(bad: np.ndarray) -> int:
    return int(np.argwhere(bad.reshape(bad.shape[0], -1).any(1))[0][0])


def check_targets(x: np.ndarray, where: str, rows=None) -> None:
    """Targets (N, C, H, W) must be finite; ``rows`` maps positions to the user's row numbers."""
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            i = _first_row(bad)
            raise InputError(f"{where}: NaN or inf in the target at row {rows[i] if rows is not None else i}; "
                             "targets must be finite")


def check_observations(cond: np.ndarray, mask: np.ndarray | None, where: str, rows=None,
                       offset=None, scale=None) -> None:
    """Condition (N, C_c, H, W) and mask (N, 1, H, W), or per channel (N, C_c, H, W), 1 = known.

    With the normalisation's per-channel ``offset``/``scale`` (the checkpoint's), known values more than
    ``ABSURD`` scales from the offset are refused too.
    """
    name = lambda i: rows[i] if rows is not None else i
    if not np.issubdtype(cond.dtype, np.floating):
        return
    inf = np.isinf(cond)
    if inf.any():
        raise InputError(f"{where}: inf in the condition at row {name(_first_row(inf))}; mark unknown values "
                         "with NaN or the mask, never inf")
    if mask is None:
        return
    known = np.broadcast_to(np.asarray(mask).astype(bool), cond.shape)
    nan_known = np.isnan(cond) & known
    if nan_known.any():
        raise InputError(f"{where}: NaN in the condition at row {name(_first_row(nan_known))} where the mask "
                         "says known")
    if offset is not None:
        o = np.asarray(offset, np.float64).reshape(1, -1, 1, 1)
        s = np.asarray(scale, np.float64).reshape(1, -1, 1, 1)
        with np.errstate(invalid="ignore", over="ignore"):
            far = (np.abs((cond.astype(np.float64) - o) / s) > ABSURD) & known
        if far.any():
            i = _first_row(far)
            v = float(cond[i][far[i]].flat[0])
            raise InputError(f"{where}: known condition value {v:.4g} at row {name(i)} is more than {ABSURD:g} "
                             "times the training data's range from its centre (wrong units or a fill value?)")
