"""Labelled PNG figures with matplotlib (Agg, no display): reconstruction panels and the tune metric(w) curves.

Panels: one column per quantity with its header, one row per field with its label (the mask kind), a
shared colour scale for every column in the data's units, a separate one for the std, and missing
observations drawn in grey. Files are written atomically (a temporary name, then a rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers and in Ray workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MISSING_GREY = (0.55, 0.55, 0.55)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def panel_grid(path: str | os.PathLike, rows: list[list[np.ndarray | None]], columns: list[str],
               row_labels: list[str], kinds: list[str], title: str = "", value_range: tuple | None = None) -> Path:
    """``panel_figure`` written to ``path`` (PNG)."""
    return _save(panel_figure(rows, columns, row_labels, kinds, title, value_range), path)


def panel_figure(rows: list[list[np.ndarray | None]], columns: list[str], row_labels: list[str], kinds: list[str],
                 title: str = "", value_range: tuple | None = None):
    """``rows[r][j]`` is a (C, H, W) or (H, W) array (first channel shown; NaN = not observed, drawn grey)
    or None (an empty cell). ``kinds[j]`` is "value" (shared scale, ``value_range`` or the range of every
    value cell), "std" (its own scale from 0) or "mask" (0/1 in grey levels)."""
    first = lambda a: np.asarray(a, dtype=np.float64).reshape(-1, *np.shape(a)[-2:])[0]
    cells = [[None if a is None else first(a) for a in row] for row in rows]
    vals = [c for row in cells for c, k in zip(row, kinds) if c is not None and k == "value"]
    stds = [c for row in cells for c, k in zip(row, kinds) if c is not None and k == "std"]
    finite = lambda arrs: np.concatenate([a[np.isfinite(a)] for a in arrs]) if arrs else np.zeros(1)
    lo, hi = value_range or (float(finite(vals).min()), float(finite(vals).max()))
    smax = max(float(finite(stds).max()), 1e-12)
    n_r, n_c = len(cells), len(columns)
    fig, axes = plt.subplots(n_r, n_c, figsize=(1.55 * n_c + 1.6, 1.55 * n_r + 0.6), squeeze=False)
    value_map = plt.get_cmap("viridis").with_extremes(bad=MISSING_GREY)
    std_map = plt.get_cmap("magma").copy()
    ims = {}
    for r, row in enumerate(cells):
        for j, c in enumerate(row):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if c is None:
                ax.axis("off")
                continue
            if kinds[j] == "value":
                ims["value"] = ax.imshow(np.ma.masked_invalid(c), cmap=value_map, vmin=lo, vmax=hi)
            elif kinds[j] == "std":
                ims["std"] = ax.imshow(c, cmap=std_map, vmin=0.0, vmax=smax)
            else:
                ax.imshow(c, cmap="gray", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(columns[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    height = fig.get_figheight()
    fig.subplots_adjust(wspace=0.05, hspace=0.08, left=0.1, right=0.78, top=1 - 0.5 / height, bottom=0.15 / height)
    for x, kind, label in ((0.81, "value", "value (data units)"), (0.91, "std", "std (data units)")):
        if kind in ims:
            cax = fig.add_axes((x, 0.3, 0.018, 0.4))
            fig.colorbar(ims[kind], cax=cax).set_label(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    return fig


def line_chart(series: dict[str, list[tuple[float, float]]], path: str | os.PathLike, x_label: str = "x",
               y_label: str = "y", title: str = "", x_ticks: list[float] | None = None) -> Path:
    """One line with markers per series, ticks at ``x_ticks`` (the evaluated values), and a legend."""
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for name, pts in series.items():
        pts = sorted((p for p in pts if p[1] is not None), key=lambda p: p[0])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if x_ticks:
        ax.set_xticks(sorted(set(x_ticks)))
        ax.set_xticklabels([f"{v:g}" for v in sorted(set(x_ticks))])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def seam_plot(path: str | os.PathLike, maps: list[tuple[str, dict[str, np.ndarray]]], seams: dict) -> Path:
    """One row per degradation: the model's per-pixel MSE map (and the reference's, when there is one) with the
    interior window edges drawn, then the row and column means of each map against the edges (``cfgdiff.seams``)."""
    n_c = 1 + max(len(m) for _, m in maps) + 2
    fig, axes = plt.subplots(len(maps), n_c, figsize=(2.6 * n_c, 2.4 * len(maps) + 0.4), squeeze=False)
    names = {"model": "cfgdiff", "reference": "Bayes optimum"}
    for r, (spec, m) in enumerate(maps):
        s = seams[spec]
        vmax = max(float(np.nanmax(v)) for v in m.values()) or 1.0
        axes[r][0].axis("off")
        axes[r][0].text(0.0, 0.5, f"{spec}\ntile {s['tile']}, overlap {s['overlap']}\nedge/rest: "
                        + ", ".join(f"{names[k]} {s[k]['edge_over_rest']:.3f}" for k in m
                                    if s[k]["edge_over_rest"] is not None), fontsize=8, va="center")
        for j, (key, E) in enumerate(m.items(), start=1):
            ax = axes[r][j]
            ax.imshow(E, cmap="magma", vmin=0.0, vmax=vmax)
            for e in s["row_edges"]:
                ax.axhline(e - 0.5, color="c", lw=0.5, alpha=0.6)
            for e in s["col_edges"]:
                ax.axvline(e - 0.5, color="c", lw=0.5, alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{names[key]}: MSE per pixel", fontsize=8)
        for j, (axis, edges) in enumerate((("row", s["row_edges"]), ("col", s["col_edges"])), start=n_c - 2):
            ax = axes[r][j]
            for key in m:
                ax.plot(s[key][f"{axis}_mean_mse"], label=names[key], lw=1)
            for e in edges:
                ax.axvline(e - 0.5, color="c", lw=0.5, alpha=0.6)
            ax.set_title(f"{axis} means (lines: window edges)", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == 0 and j == n_c - 2:
                ax.legend(fontsize=7)
        for j in range(1 + len(m), n_c - 2):
            axes[r][j].axis("off")
    fig.tight_layout()
    return _save(fig, path)
