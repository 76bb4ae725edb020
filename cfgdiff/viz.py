"""PNG image grids with the standard library only (zlib + struct): no imaging dependency in the core."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np


def write_png(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write uint8 (H, W) grayscale or (H, W, 3) RGB to ``path`` atomically."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    H, W = img.shape[:2]
    color = 2 if img.ndim == 3 else 0
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(H))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, color, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)
    return path


def _viridis_like(v: np.ndarray) -> np.ndarray:
    """Map [0, 1] to a perceptually ordered blue-green-yellow ramp, (..., 3) uint8."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    x = np.clip(np.nan_to_num(v, nan=0.0), 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def image_grid(rows: list[list[np.ndarray]], scale: int = 4, pad: int = 2, ranges: list[tuple] | None = None,
               masks: list[list[np.ndarray | None]] | None = None) -> np.ndarray:
    """Tile (C, H, W) panels into an RGB grid. Column j uses value range ``ranges[j]`` (lo, hi).

    Only the first channel of each panel is shown. Where ``masks[r][j]`` is 0 the pixel is drawn in
    grey, so missing observations are visible.
    """
    n_rows, n_cols = len(rows), len(rows[0])
    H, W = rows[0][0].shape[-2:]
    cell_h, cell_w = H * scale + pad, W * scale + pad
    out = np.full((n_rows * cell_h + pad, n_cols * cell_w + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for j, panel in enumerate(row):
            a = np.asarray(panel, dtype=np.float64).reshape(-1, H, W)[0]
            lo, hi = ranges[j] if ranges else (np.nanmin(a), np.nanmax(a))
            rgb = _viridis_like((a - lo) / (hi - lo if hi > lo else 1.0))
            m = masks[r][j] if masks else None
            if m is not None:
                rgb[np.asarray(m).reshape(-1, H, W)[0] == 0] = 128  # the first channel, like the panel
            rgb[~np.isfinite(a)] = 128
            rgb = rgb.repeat(scale, 0).repeat(scale, 1)
            y, x = pad + r * cell_h, pad + j * cell_w
            out[y:y + H * scale, x:x + W * scale] = rgb
    return out
