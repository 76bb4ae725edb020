"""Figures that explain themselves (#17.4, #17.5): headers, row labels, two colour scales, ticks at the w values."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cluster.plots import line_chart, panel_figure, panel_grid


def _rows():
    rng = np.random.default_rng(0)
    field = lambda: rng.normal(size=(1, 8, 8))
    observed = np.where(rng.uniform(size=(1, 8, 8)) > 0.5, field(), np.nan)
    return [[observed, field(), np.abs(field()), field()], [observed, field(), None, field()]]


def test_panel_figure_has_headers_row_labels_and_separate_scales():
    fig = panel_figure(_rows(), ["observed", "mean", "std", "target"], ["drop:0.9", "half:1"],
                       ["value", "value", "std", "value"], title="t")
    grid, bars = fig.axes[:8], fig.axes[8:]  # 2 rows x 4 columns, then the colour bars
    assert [ax.get_title() for ax in grid[:4]] == ["observed", "mean", "std", "target"]
    assert [grid[0].get_ylabel(), grid[4].get_ylabel()] == ["drop:0.9", "half:1"]
    assert sorted(b.get_ylabel() for b in bars) == ["std (data units)", "value (data units)"]
    images = {ax.get_title() or i: ax.images[0] for i, ax in enumerate(grid[:4])}
    assert images["observed"].get_clim() == images["target"].get_clim() == images["mean"].get_clim()
    assert images["std"].get_clim()[0] == 0.0 and images["std"].get_clim() != images["mean"].get_clim()
    assert not grid[6].axison, "an empty cell (no std) is left blank"


def test_panel_grid_writes_a_png(tmp_path):
    p = panel_grid(tmp_path / "g.png", _rows(), ["observed", "mean", "std", "target"], ["a", "b"],
                   ["value", "value", "std", "value"])
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not list(tmp_path.glob("*.tmp*"))


def test_line_chart_ticks_at_the_evaluated_w(tmp_path):
    import matplotlib.pyplot as plt

    seen = {}
    orig = plt.close
    plt.close = lambda fig=None: seen.setdefault("ticks", [t.get_text() for t in fig.axes[0].get_xticklabels()])
    try:
        line_chart({"p=0.1": [(0.0, 20.0), (1.0, 22.5), (3.0, 21.0)], "p=0.3": [(0.0, 19.0), (1.0, None)]},
                   tmp_path / "c.png", x_label="w", y_label="psnr", x_ticks=[0.0, 1.0, 3.0])
    finally:
        plt.close = orig
    assert seen["ticks"] == ["0", "1", "3"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
