"""Tiled denoising of fields larger than the training size (MultiDiffusion, Bar-Tal et al. 2302.08113).

At every sampler step the field is cut into overlapping ``tile`` x ``tile`` windows, the network predicts
each window (all windows of all rows batched together), and the predictions are fused per pixel as a
weighted mean. MultiDiffusion's fused step (their eq. 3, a weighted least-squares fit of the per-window
steps) is that weighted mean of the per-window steps; every cfgdiff step is affine in the network's
output, so fusing the outputs is the same as fusing the steps, and the sampler (projection of the known
pixels, CFG, the solver's history) sees one consistent field. The weights ramp up over the overlap as a
raised cosine, so a window's border pixels, which see the least context, count the least and no seam is
left at the tile stride. Per-sample noise is drawn on the whole field, so seeding does not depend on tiling.
"""

from __future__ import annotations

import math

import torch

from .errors import InputError


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Window starts along a side of n pixels: stride tile - overlap, the last window flush with the edge."""
    if n < tile:
        raise ValueError(f"a side of {n} pixels is smaller than the tile {tile}")
    starts = list(range(0, n - tile + 1, tile - overlap))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def ramp(tile: int, overlap: int) -> torch.Tensor:
    """1-D window weight: sin^2 rising over the first ``overlap`` pixels, 1 inside, falling over the last
    ``overlap``; strictly positive, so every pixel of the field has weight."""
    i = torch.arange(tile, dtype=torch.float64)
    edge = torch.minimum(i + 1, tile - i) / (overlap + 1)
    return torch.sin(0.5 * math.pi * edge.clamp(max=1.0)) ** 2


def _sides(tile: int | tuple[int, int]) -> tuple[int, int]:
    return (tile, tile) if isinstance(tile, int) else tuple(tile)


def windows(H: int, W: int, tile: int | tuple[int, int], overlap: int) -> list[tuple[int, int]]:
    th, tw = _sides(tile)
    return [(y, x) for y in tile_starts(H, th, overlap) for x in tile_starts(W, tw, overlap)]


def blend_weights(H: int, W: int, tile: int | tuple[int, int], overlap: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The windows and each one's normalised weights on its own window (n_windows, th, tw): at every pixel of
    the field, the weights of the windows covering it sum to one. Memory is n_windows x th x tw, not x H x W.
    ``tile`` is a side or (th, tw)."""
    th, tw = _sides(tile)
    wins = windows(H, W, (th, tw), overlap)
    w2 = ramp(th, overlap)[:, None] * ramp(tw, overlap)[None, :]
    total = torch.zeros(H, W, dtype=torch.float64)
    for y, x in wins:
        total[y:y + th, x:x + tw] += w2
    return wins, torch.stack([w2 / total[y:y + th, x:x + tw] for y, x in wins])


class TiledDenoiser:
    """``model(x_t, t, cond, mask)`` on any field of at least tile x tile, through overlapping windows.

    The windows of all B rows go to ``model`` in one call, window-major (rows j*B..(j+1)*B are window j);
    wrap ``model`` in ``api.FixedBatch`` to bound memory and keep each row's output independent of batching.
    ``declared_prediction`` finds the network's prediction kind through ``.model``.
    """

    def __init__(self, model, tile: int, overlap: int):
        check_tiling(tile, overlap)
        self.model, self.tile, self.overlap = model, tile, overlap
        self._cache: dict = {}

    def _weights(self, H: int, W: int, device, dtype) -> tuple[list[tuple[int, int]], torch.Tensor]:
        key = (H, W, str(device), dtype)
        if key not in self._cache:
            wins, maps = blend_weights(H, W, self.tile, self.overlap)
            self._cache[key] = wins, maps.to(device=device, dtype=dtype)
        return self._cache[key]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x_t.shape
        T = self.tile
        wins, maps = self._weights(H, W, x_t.device, torch.float32)
        cut = lambda a: torch.cat([a[..., y:y + T, x:x + T] for y, x in wins])
        out = self.model(cut(x_t), t.repeat(len(wins)), cut(cond), cut(mask)).float()
        fused = torch.zeros(B, out.shape[1], H, W, device=x_t.device)
        for j, (y, x) in enumerate(wins):
            fused[..., y:y + T, x:x + T] += maps[j] * out[j * B:(j + 1) * B]
        return fused


def check_tiling(tile: int, overlap: int) -> None:
    if not isinstance(tile, int) or tile < 1:
        raise InputError(f"--tile must be an integer >= 1, got {tile!r}")
    if not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise InputError(f"--overlap must be an integer in [0, --tile={tile}), got {overlap!r}")


def plan_tiling(field: tuple[int, int], trained: tuple[int, int], tile: int | None, overlap: int | None
                ) -> tuple[int | None, int, list[str]]:
    """Check a reconstruction's field size against the model's training size and the tiling options.

    Returns (tile, overlap, warnings); tile None = whole fields. Without a tile the field must be the
    training size; with one, every side must be at least the tile. ``overlap`` defaults to tile // 4.
    """
    H, W = field
    if tile is None:
        if overlap is not None:
            raise InputError("--overlap needs --tile")
        if (H, W) != tuple(trained):
            raise InputError(f"fields are {H}x{W} but the model was trained on {trained[0]}x{trained[1]}: pass "
                             f"--tile {min(trained)} (with --overlap) to reconstruct them in overlapping windows")
        return None, 0, []
    overlap = tile // 4 if overlap is None else overlap
    check_tiling(tile, overlap)
    if min(H, W) < tile:
        raise InputError(f"--tile {tile}: fields are {H}x{W}, smaller than the tile; use --tile <= {min(H, W)}")
    warnings = []
    if tile > min(trained):
        warnings.append(f"--tile {tile} is larger than the model's training size {trained[0]}x{trained[1]}: the "
                        "network will see windows larger than any it was trained on")
    return tile, overlap, warnings
