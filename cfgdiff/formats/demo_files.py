"""The demo fields written as users keep them (``cfgdiff demo-data --format``), so that the README's
"Your files" commands run as written: NetCDF/Zarr with coordinates, units and a _FillValue where a
sensor saw nothing, HDF5 datasets, and folders of 16-bit PNG or float TIFF images with mask images.

Every format holds the clean fields and an observed copy with the same seeded 80% of pixels missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import require

FORMATS = ("npy", "nc", "zarr", "h5", "png", "tif")
VARIABLE = {"grf": "field", "turbulence": "vorticity", "shapes": "intensity"}
FILL = -9999.0


def observed_mask(shape: tuple[int, ...], seed: int, known: float = 0.2) -> np.ndarray:
    """The demo's sensor coverage: each pixel seen with probability ``known`` (seeded)."""
    return (np.random.default_rng(seed + 7).uniform(size=shape) < known).astype(np.uint8)


def _dataset(x: np.ndarray, kind: str, observed: bool, seed: int):
    xr = require("xarray", "--format")
    n, H, W = x.shape
    name = VARIABLE[kind]
    values = x.astype(np.float32)
    data_vars = {}
    if observed:
        valid = observed_mask(x.shape, seed)
        values = np.where(valid == 1, values, np.nan).astype(np.float32)
        data_vars["valid"] = (("time", "y", "x"), valid, {"long_name": "1 where the sensor saw the field"})
    attrs = {"units": "1/s" if kind == "turbulence" else "1", "long_name": f"{kind} {name}"}
    data_vars[name] = (("time", "y", "x"), values, attrs)
    coords = {"time": ("time", np.arange(n, dtype=np.float64) * 0.5, {"units": "seconds since 2000-01-01 00:00:00",
                                                                       "calendar": "standard"}),
              "y": ("y", np.arange(H, dtype=np.float32) * 1000.0, {"units": "m", "long_name": "northing"}),
              "x": ("x", np.arange(W, dtype=np.float32) * 1000.0, {"units": "m", "long_name": "easting"})}
    return xr.Dataset(data_vars, coords=coords, attrs={"title": f"cfgdiff demo ({kind})", "Conventions": "CF-1.8"})


def _write_images(folder: Path, x: np.ndarray, fmt: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(x):
        if fmt == "png":
            Image.fromarray(f).save(folder / f"{i:05d}.png")
        else:
            require("tifffile", "--format tif").imwrite(folder / f"{i:05d}.tif", f, photometric="minisblack")


def write_files(out: Path, x: np.ndarray, kind: str, fmt: str, seed: int) -> dict[str, str]:
    """Write (n, 1, H, W) fields ``x`` to ``out`` in ``fmt``; returns what was written, by role."""
    x = x[:, 0]
    name = VARIABLE[kind]
    if fmt in ("nc", "zarr"):
        files = {}
        for role, observed in (("fields", False), ("observed", True)):
            ds = _dataset(x, kind, observed, seed)
            path = out / f"{role}.{fmt}"
            if fmt == "nc":
                enc = {name: {"_FillValue": FILL}} if observed else {}
                ds.to_netcdf(path, engine="h5netcdf", encoding=enc)
            else:
                require("zarr", "--format zarr")
                ds.to_zarr(path, mode="w", encoding={name: {"_FillValue": FILL}} if observed else {}, zarr_format=2,
                          consolidated=True)
            files[role] = f"{path}:{name}"
        return files
    if fmt == "h5":
        h5py = require("h5py", "--format h5")
        path = out / "fields.h5"
        valid = observed_mask(x.shape, seed)
        with h5py.File(path, "w") as f:
            f.create_dataset(f"fields/{name}", data=x.astype(np.float32))
            f.create_dataset(f"observed/{name}", data=np.where(valid == 1, x, np.nan).astype(np.float32))
            f.create_dataset("observed/valid", data=valid)
        return {"fields": f"{path}:/fields/{name}", "observed": f"{path}:/observed/{name}"}
    # images: 16-bit grey PNG (the field quantised over its range) or float32 TIFF, and 8-bit masks
    lo, hi = float(x.min()), float(x.max())
    img = np.rint((x - lo) / (hi - lo) * 65535).astype(np.uint16) if fmt == "png" else x.astype(np.float32)
    _write_images(out / "images", img, fmt)
    _write_images(out / "masks", observed_mask(x.shape, seed) * np.uint8(255), "png")
    return {"images": str(out / "images"), "masks": str(out / "masks")}
