"""PNG line charts with labels (Pillow): the tune metric(w) curves."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def line_chart(series: dict[str, list[tuple[float, float]]], path: str | os.PathLike, x_label: str = "x",
               y_label: str = "y", title: str = "", size: tuple[int, int] = (760, 480)) -> Path:
    """One line per series with markers, axes with tick labels, and a legend; written atomically."""
    W, H = size
    left, right, top, bottom = 70, 210, 40, 55
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s if p[1] is not None]
    xs, ys = [p[0] for p in pts] or [0, 1], [p[1] for p in pts] or [0, 1]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    X = lambda v: left + (v - x0) / (x1 - x0) * (W - left - right)
    Y = lambda v: H - bottom - (v - y0) / (y1 - y0) * (H - top - bottom)
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(6):
        yv = y0 + i * (y1 - y0) / 5
        d.line([left - 4, Y(yv), left, Y(yv)], fill="black")
        d.text((5, Y(yv) - 6), f"{yv:.3g}", fill="black")
        xv = x0 + i * (x1 - x0) / 5
        d.line([X(xv), H - bottom, X(xv), H - bottom + 4], fill="black")
        d.text((X(xv) - 10, H - bottom + 8), f"{xv:.3g}", fill="black")
    d.text((left + (W - left - right) // 2 - 40, H - 22), x_label, fill="black")
    d.text((5, 24), y_label, fill="black")
    d.text((left, 6), title, fill="black")
    for i, (name, s) in enumerate(series.items()):
        col = PALETTE[i % len(PALETTE)]
        s = sorted((p for p in s if p[1] is not None), key=lambda p: p[0])
        if len(s) > 1:
            d.line([(X(a), Y(b)) for a, b in s], fill=col, width=2)
        for a, b in s:
            d.ellipse([X(a) - 3, Y(b) - 3, X(a) + 3, Y(b) + 3], fill=col)
        ly = top + 10 + 16 * i
        d.line([W - right + 12, ly + 6, W - right + 32, ly + 6], fill=col, width=3)
        d.text((W - right + 38, ly), name[:26], fill="black")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path
