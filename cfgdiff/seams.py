"""Seam check for tiled reconstructions: where the per-pixel error sits relative to the window edges.

A tiled sampler that left seams would show them as lines of larger error at the tile stride. Per pixel,
the squared error of the missing pixels is averaged over the scored fields; its row and column means are
the profiles to look at, and ``edge_over_rest`` condenses them: the mean error within one pixel of an
interior window edge over the mean error elsewhere. Mask geometry alone moves that ratio (a box or a half
mask puts the error where the pixels are missing), so the same figure for a reference without windows (the
Bayes optimum on Gaussian demo data) is reported beside it: a seam shows as the model's ratio above the
reference's, and no periodic bumps at the ``row_edges`` / ``col_edges`` of the profiles.
"""

from __future__ import annotations

import numpy as np

from .tiling import tile_starts


def error_map(recon: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) mean squared error over the rows (and channels) where the pixel is missing; NaN where never missing."""
    missing = np.broadcast_to(np.asarray(mask) == 0, np.shape(target))
    err = np.where(missing, (np.asarray(recon, np.float64) - np.asarray(target, np.float64)) ** 2, 0.0)
    count = missing.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, err.sum(axis=(0, 1)) / np.maximum(count, 1), np.nan)


def window_edges(n: int, tile: int, overlap: int) -> list[int]:
    """Interior window boundaries along a side of n pixels: a boundary e lies between pixels e - 1 and e."""
    starts = tile_starts(n, tile, overlap)
    return sorted({s for s in starts if s > 0} | {s + tile for s in starts if s + tile < n})


def _edge_band(H: int, W: int, rows: list[int], cols: list[int]) -> np.ndarray:
    band = np.zeros((H, W), bool)
    for e in rows:
        band[e - 1:e + 1] = True
    for e in cols:
        band[:, e - 1:e + 1] = True
    return band


def _profiles(E: np.ndarray, band: np.ndarray) -> dict:
    rest = E[~band & np.isfinite(E)]
    near = E[band & np.isfinite(E)]
    ratio = float(near.mean() / rest.mean()) if len(near) and len(rest) and rest.mean() > 0 else None
    return {"row_mean_mse": _line_means(E, 1), "col_mean_mse": _line_means(E, 0), "edge_over_rest": ratio}


def _line_means(E: np.ndarray, axis: int) -> list[float | None]:
    """Mean over the pixels of each row (axis 1) or column (axis 0) that were ever missing; None for a line
    with none (JSON has no NaN)."""
    seen = np.isfinite(E)
    total, count = np.where(seen, E, 0.0).sum(axis=axis), seen.sum(axis=axis)
    return [float(t / c) if c else None for t, c in zip(total, count)]


def seam_report(recon: np.ndarray, target: np.ndarray, mask: np.ndarray, tile: int, overlap: int,
                reference: np.ndarray | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The seam figures of (N, C, H, W) reconstructions (normalised units) tiled at ``tile``/``overlap``, and
    the error maps they came from (``"model"``, and ``"reference"`` when given) for the plot."""
    H, W = np.shape(target)[-2:]
    rows, cols = window_edges(H, tile, overlap), window_edges(W, tile, overlap)
    band = _edge_band(H, W, rows, cols)
    maps = {"model": error_map(recon, target, mask)}
    doc = {"tile": tile, "overlap": overlap, "row_edges": rows, "col_edges": cols, "model": _profiles(maps["model"], band)}
    if reference is not None:
        maps["reference"] = error_map(reference, target, mask)
        doc["reference"] = _profiles(maps["reference"], band)
    return doc, maps
