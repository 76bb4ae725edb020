"""Classical inpainting baselines for ``cfgdiff evaluate``.

mean-fill needs nothing; the others come from the optional ``eval`` extra (scipy, scikit-image,
opencv-python-headless) and are imported lazily inside their functions, so importing cfgdiff never
loads them. Every baseline maps user-unit (N, C, H, W) observations plus a (N, 1, H, W) or per-channel (N, C, H, W) mask to a
full reconstruction, per channel, and keeps known pixels exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .evaluate import mean_fill_raw


def _per_image(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(cond: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.empty(cond.shape, np.float32)
        for i in range(cond.shape[0]):
            for c in range(cond.shape[1]):
                known = mask[i, min(c, mask.shape[1] - 1)].astype(bool)  # per pixel, or per channel
                img = np.nan_to_num(cond[i, c].astype(np.float64))
                if known.all() or not known.any():
                    out[i, c] = img if known.all() else 0.0
                    continue
                out[i, c] = np.where(known, img, fn(img, known))
        return out
    return run


def _griddata(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    from scipy.interpolate import griddata

    pts = np.argwhere(known)
    miss = np.argwhere(~known)
    lin = griddata(pts, img[known], miss, method="linear")
    near = griddata(pts, img[known], miss, method="nearest")  # outside the convex hull
    out = img.copy()
    out[~known] = np.where(np.isfinite(lin), lin, near)
    return out


def _biharmonic(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    return inpaint_biharmonic(img, ~known)


def _cv2(flag_name: str):
    def run(img: np.ndarray, known: np.ndarray) -> np.ndarray:
        import cv2

        lo, hi = float(img[known].min()), float(img[known].max())
        span = hi - lo if hi > lo else 1.0
        u8 = np.clip((img - lo) / span * 255.0, 0, 255).astype(np.uint8)  # cv2.inpaint works on 8-bit images
        res = cv2.inpaint(u8, (~known).astype(np.uint8), 3, getattr(cv2, flag_name))
        return res.astype(np.float64) / 255.0 * span + lo
    return run


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean-fill": mean_fill_raw,
    "linear (griddata)": _per_image(_griddata),
    "biharmonic": _per_image(_biharmonic),
    "opencv Telea": _per_image(_cv2("INPAINT_TELEA")),
    "opencv Navier-Stokes": _per_image(_cv2("INPAINT_NS")),
}


def available() -> dict[str, str | None]:
    """Which baselines can run here: name -> None, or the reason it cannot."""
    out = {"mean-fill": None}
    for name, mod in (("linear (griddata)", "scipy"), ("biharmonic", "skimage"), ("opencv Telea", "cv2"),
                      ("opencv Navier-Stokes", "cv2")):
        try:
            __import__(mod)
            out[name] = None
        except ImportError:
            out[name] = f"{mod} not installed (pip install 'cfgdiff[eval]')"
    return out
