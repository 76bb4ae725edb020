"""Folders of PNG, JPEG and TIFF images as rows, and reconstructions written back as images.

One image is one row, in the order of the file names; a mask or condition folder pairs with the
target folder by name (``a.png`` with ``a.png`` or ``a.tif``). PNG and JPEG are read with Pillow,
TIFF with tifffile (Pillow reads a 16-bit RGB TIFF as 8-bit, silently). Pixels keep their dtype
(8- or 16-bit integers, float TIFF), so known pixels come back exactly. Masks are grey images holding
only 0 and the type's maximum (or 0 and 1): white = known. An alpha channel is the mask with
``--mask alpha`` (transparent = missing); without it, an alpha that is not fully opaque is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data import MIN_SIDE
from ..errors import InputError
from . import IMAGES, require

TIFF = (".tif", ".tiff")


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _png_depth(f: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None for anything else."""
    with open(f, "rb") as fh:
        head = fh.read(26)
    return (head[24], head[25]) if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else None


def read_image(f: Path) -> np.ndarray:
    """One image as (H, W, C) in its own dtype (C = 1-4; 2 and 4 end with alpha)."""
    if f.suffix.lower() in TIFF:
        tifffile = require("tifffile", str(f))
        try:
            a = np.asarray(tifffile.imread(f))
        except Exception as e:  # tifffile raises several types for damaged files
            raise InputError(f"{f}: unreadable TIFF ({_first_line(e)})") from None
        if a.ndim == 3 and a.shape[0] <= 4 < a.shape[-1]:
            a = np.moveaxis(a, 0, -1)  # planar (C, H, W) -> (H, W, C)
    else:
        depth = _png_depth(f)
        if depth and depth[0] == 16 and depth[1] in (2, 6):
            raise InputError(f"{f}: a 16-bit colour PNG, which Pillow reads as 8-bit; save it as a 16-bit TIFF")
        a = _pil_array(f, str(f))
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or not 1 <= a.shape[-1] <= 4:
        raise InputError(f"{f}: expected a grey, grey+alpha, RGB or RGBA image, found an array of shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{f}: pixel type {a.dtype} is not an integer or float")
    return a


def _pil_array(src, what: str) -> np.ndarray:
    """A PNG/JPEG file (a path or a binary stream) as an array in its own dtype, through Pillow."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(src) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise InputError(f"{what}: unreadable image ({_first_line(e)})") from None


def decode_png(data: bytes, what: str) -> np.ndarray:
    """PNG bytes (an HTTP upload) -> (H, W, C) in the image's dtype (grey, RGB; alpha refused)."""
    import io

    a = _pil_array(io.BytesIO(data), what)
    a = a.astype(np.uint8) if a.dtype == np.bool_ else a
    a = a[..., None] if a.ndim == 2 else a
    if a.shape[-1] not in (1, 3):
        raise InputError(f"{what}: expected a grey or RGB image, found {a.shape[-1]} channels")
    return a


def encode_png(x: np.ndarray, dtype: np.dtype) -> bytes:
    """(C, H, W) values -> PNG bytes in ``dtype`` (rounded and clipped to its range)."""
    import io

    from PIL import Image

    info = np.iinfo(dtype)
    a = np.clip(np.rint(np.asarray(x).transpose(1, 2, 0)), info.min, info.max).astype(dtype)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()


def _top(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def binarise(a: np.ndarray, what: str) -> np.ndarray:
    """A mask image (0 and the type's maximum, or 0 and 1) -> uint8 0/1; anything else is refused."""
    top = _top(a.dtype)
    bad = ~((a == 0) | (a == top) | (a == 1))
    if bad.any() or ((a == 1).any() and (a == top).any() and top != 1):
        v = a[bad].flat[0] if bad.any() else 1
        bits = f"{a.dtype.itemsize * 8}-bit " if np.issubdtype(a.dtype, np.integer) else ""
        raise InputError(f"{what}: a {bits}mask must hold only 0 and {top:g} (or 0 and 1), found {v}")
    return (a != 0).astype(np.uint8)


class ImageFolderSource:
    """Images in a folder as (n, C, H, W) rows; ``role`` mask gives (n, 1, H, W) uint8 0/1."""

    def __init__(self, spec: str, role: str, alpha: bool = False):
        self.spec, self.role, self.alpha = spec, role, alpha
        self.path = Path(spec)
        files = sorted((f for f in self.path.iterdir() if f.suffix.lower() in IMAGES and f.is_file()),
                       key=lambda f: (f.stem, f.suffix))
        stems = [f.stem for f in files]
        dup = next((s for s, t in zip(stems, stems[1:]) if s == t), None)
        if dup is not None:
            raise InputError(f"{self.path}: two images are named {dup!r} (different extensions); keep one")
        self.files, self.stems, self.name = files, stems, str(self.path)
        first = read_image(files[0])
        H, W, n_ch = first.shape
        if min(H, W) < MIN_SIDE:
            raise InputError(f"{files[0]} ({role}): images are {H}x{W}; cfgdiff needs at least {MIN_SIDE}x{MIN_SIDE}")
        self.raw_shape, self.raw_dtype = first.shape, first.dtype
        self.has_alpha = n_ch in (2, 4)
        if alpha and not self.has_alpha:
            raise InputError(f"--mask alpha: {files[0]} has no alpha channel ({n_ch} channel(s))")
        colour = n_ch - self.has_alpha
        if role == "mask" and not alpha and colour not in (1, 3):
            raise InputError(f"{files[0]} (mask): expected a grey mask image, found {n_ch} channels")
        self.C = 1 if role == "mask" else colour
        self.dtype = np.dtype(np.uint8) if role == "mask" else first.dtype
        for f in files[1:]:
            self._check_header(f)

    def _check_header(self, f: Path) -> None:
        """Size and channels from the header only (the pixels are read, and checked again, in the passes)."""
        if f.suffix.lower() in TIFF:
            tifffile = require("tifffile", str(f))
            try:
                with tifffile.TiffFile(f) as t:
                    shape = t.series[0].shape
            except Exception as e:
                raise InputError(f"{f}: unreadable TIFF ({_first_line(e)})") from None
            hw = shape[:2] if len(shape) == 2 or shape[-1] <= 4 else shape[-2:]
        else:
            from PIL import Image, UnidentifiedImageError
            try:
                with Image.open(f) as im:
                    hw = im.size[::-1]
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                raise InputError(f"{f}: unreadable image ({_first_line(e)})") from None
        if tuple(hw) != self.raw_shape[:2]:
            raise InputError(f"{f}: {hw[0]}x{hw[1]} pixels, but {self.files[0]} is "
                             f"{self.raw_shape[0]}x{self.raw_shape[1]}; every image in {self.path} must have one size")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.C, *self.raw_shape[:2])

    def _row(self, f: Path) -> np.ndarray:
        a = read_image(f)
        if a.shape != self.raw_shape or a.dtype != self.raw_dtype:
            raise InputError(f"{f}: {a.shape[0]}x{a.shape[1]}x{a.shape[2]} {a.dtype}, but {self.files[0]} is "
                             f"{'x'.join(map(str, self.raw_shape))} {self.raw_dtype}; a folder holds one kind of image")
        if self.has_alpha:
            colour, alpha = a[..., :-1], a[..., -1:]
            if self.role == "mask" and self.alpha:
                return binarise(alpha, f"{f} (alpha)")
            if not self.alpha and (alpha != _top(a.dtype)).any():
                raise InputError(f"{f}: has a transparent alpha channel; pass --mask alpha to use it as the mask")
            a = colour
        if self.role == "mask":
            if a.shape[-1] == 3:
                if not ((a[..., :1] == a).all()):
                    raise InputError(f"{f} (mask): a colour mask image; expected grey (white = known)")
                a = a[..., :1]
            return binarise(a, f"{f} (mask)")
        return a

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as (n, C, H, W) in the images' dtype."""
        return np.stack([self._row(f) for f in self.files[start:stop]]).transpose(0, 3, 1, 2).copy()

    def sources(self) -> list[dict[str, Any]]:
        return [{"path": str(self.path), "files": len(self.files), "shape": [len(self.files), *self.raw_shape],
                 "dtype": str(self.raw_dtype)}]

    def describe(self) -> dict[str, Any]:
        return {"kind": "images", "path": str(self.path), "files": [f.name for f in self.files],
                "dtype": str(self.raw_dtype), "channels": self.C}


def check_paired(ref: ImageFolderSource, other) -> None:
    """Folders pair by file name: every image needs its mask (or condition) and the reverse."""
    if not isinstance(other, ImageFolderSource) or other.path == ref.path:
        return
    a, b = set(ref.stems), set(other.stems)
    if b - a:
        f = next(f for f in other.files if f.stem in b - a)
        raise InputError(f"{f} ({other.role}): no image named {f.stem}.* in {ref.path} ({len(b - a)} unpaired)")
    if a - b:
        f = next(f for f in ref.files if f.stem in a - b)
        raise InputError(f"{f}: no {other.role} named {f.stem}.* in {other.path} ({len(a - b)} unpaired)")


def output_name(name: str, dtype: np.dtype, channels: int) -> str:
    """The file a reconstruction of input ``name`` is written to: same name, except JPEG -> PNG (lossless)
    and anything PNG cannot hold (float, more than 8 bits in colour) -> TIFF."""
    stem, suffix = os.path.splitext(name)
    suffix = suffix.lower()
    if suffix in TIFF:
        return name
    png_ok = dtype == np.uint8 or (dtype == np.uint16 and channels == 1)
    return f"{stem}.png" if png_ok else f"{stem}.tif"


def check_image_output(out: str, desc: dict | None, channels: int) -> None:
    """Refuse a folder output that cannot hold the result, before any work."""
    if not desc or desc.get("kind") != "images":
        raise InputError(f"--out {out}: a folder output writes one image per input image, but the input is not a "
                         "folder of images; use .npy, .parquet, .nc or .zarr")
    if channels not in (1, 3) and any(not n.lower().endswith(TIFF) for n in desc["files"]):
        raise InputError(f"--out {out}: PNG holds 1 (grey) or 3 (RGB) channels; the model reconstructs {channels}")
    if any(output_name(n, np.dtype(desc["dtype"]), channels).endswith(".tif") for n in desc["files"]):
        require("tifffile", f"--out {out}")


def write_images(out: Path, desc: dict, index: np.ndarray, rec: np.ndarray, std: np.ndarray | None) -> None:
    """One image per reconstructed row, named after its input, in the input's dtype (integers rounded
    and clipped to the type's range; known pixels are integers already, so they come back exactly).
    With K > 1 the per-pixel std goes to ``NAME.std.tif`` (float32)."""
    from PIL import Image

    dtype = np.dtype(desc["dtype"])
    out.mkdir(parents=True)
    for j, i in enumerate(index):
        x = np.asarray(rec[j]).transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        x = x.astype(dtype)
        name = output_name(desc["files"][int(i)], dtype, x.shape[-1])
        if name.endswith((".tif", ".tiff")):
            require("tifffile", str(out / name)).imwrite(out / name, x[..., 0] if x.shape[-1] == 1 else x,
                                                         photometric="rgb" if x.shape[-1] == 3 else "minisblack")
        else:
            Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(out / name)
        if std is not None:
            s = np.asarray(std[j], np.float32).transpose(1, 2, 0)
            stem = os.path.splitext(desc["files"][int(i)])[0]
            require("tifffile", str(out)).imwrite(out / f"{stem}.std.tif", s[..., 0] if s.shape[-1] == 1 else s,
                                                  photometric="minisblack")
