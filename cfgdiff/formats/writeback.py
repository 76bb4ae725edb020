"""Reconstructions back into the user's format: NetCDF or Zarr with the source's dimensions,
coordinates and attributes, or one image per input image (``images.write_images``).

The variables keep their names, dimension order, attributes and on-disk encoding (dtype, _FillValue,
scale_factor/add_offset): known pixels are the source's own values, bit for bit. ``NAME_std`` (K > 1)
and ``mask`` (1 = observed) sit beside them, linked through CF ``ancillary_variables``; each variable
says how it was produced (checkpoint, sampler, steps, w, K, seed) and the dataset's ``history`` gains
one line. A source that was plain arrays gets the dimensions (sample, channel, y, x).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import SCIENTIFIC, require

GENERIC_DIMS = ("sample", "channel", "y", "x")


def output_kind(out: str) -> str:
    """npy, parquet, xarray or images (a folder: a trailing slash or no extension)."""
    p = Path(out)
    suffix = p.suffix.lower()
    if suffix in (".npy", ".parquet"):
        return suffix[1:]
    if suffix in SCIENTIFIC:
        return "xarray"
    if out.endswith(("/", "\\")) or suffix == "" or p.is_dir():
        return "images"
    if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        raise InputError(f"--out {out}: one image cannot hold every reconstructed row; give a folder (recon/) for one "
                         "image per input image")
    raise InputError(f"--out {out}: expected .npy, .parquet, .nc, .zarr or a folder/ for images")


def generic_source(C: int) -> dict[str, Any]:
    """The description of plain (N, C, H, W) arrays, for writing them as NetCDF/Zarr."""
    dims = list(GENERIC_DIMS if C > 1 else GENERIC_DIMS[:1] + GENERIC_DIMS[2:])
    return {"kind": "arrays", "sample_dim": "sample", "coords": {}, "attrs": {},
            "variables": [{"name": "reconstruction", "dims": dims, "read_order": dims,
                           "channel_dim": "channel" if C > 1 else None, "channels": C, "dtype": "float32",
                           "attrs": {}, "encoding": {}}]}


def _coords(xr, desc: dict, index: np.ndarray):
    """The source's coordinates, the sample-dimension ones restricted to the reconstructed rows."""
    c = {}
    for name, spec in desc["coords"].items():
        values = np.asarray(spec["values"], dtype=np.dtype(spec["dtype"]))
        c[name] = xr.Variable(spec["dims"], values, attrs=spec["attrs"])
    ds = xr.Dataset(coords=c)
    s = desc.get("sample_dim")
    return ds.isel({s: index}) if s and s in ds.dims else ds


def _provenance(p: dict) -> dict[str, Any]:
    return {f"cfgdiff_{k}": (v if isinstance(v, (int, float, str)) else str(v)) for k, v in p.items() if v is not None}


def write_dataset(out: Path, desc: dict, index: np.ndarray, values: np.ndarray, std: np.ndarray | None,
                  mask: np.ndarray, provenance: dict) -> None:
    """Write ``values`` (n, C, H, W, the source's decoded dtype), ``std`` and ``mask`` as NetCDF or Zarr."""
    xr = require("xarray", f"--out {out}")
    s = desc.get("sample_dim")
    one_row = s is None
    data_vars, c0 = {}, 0
    per_channel_mask = mask.shape[1] > 1
    names = [v["name"] for v in desc["variables"]]
    for v in desc["variables"]:
        order, n_ch = v["read_order"], v["channels"]
        sl = slice(c0, c0 + n_ch)
        c0 += n_ch

        def shaped(a, order=order, sl=sl, v=v):  # (n, C, H, W) -> the variable in its source dims
            a = a[:, sl] if v["channel_dim"] else a[:, sl.start]
            a = a[0] if one_row else a
            return xr.Variable(order, a).transpose(*v["dims"])

        anc = ([f"{v['name']}_std"] if std is not None else []) + [f"{v['name']}_mask" if per_channel_mask else "mask"]
        attrs = {**v["attrs"], **_provenance(provenance), "ancillary_variables": " ".join(anc),
                 "comment": (f"mean of {provenance['num_samples']} posterior samples" if std is not None else
                             "one posterior sample") + "; observed pixels are the input's values"}
        data_vars[v["name"]] = (shaped(values), attrs, dict(v["encoding"]))
        label = v["attrs"].get("long_name", v["name"])
        if std is not None:
            std_attrs = {"long_name": f"standard deviation of {label} over the samples", "cell_methods": "draw: standard_deviation",
                         **({"units": v["attrs"]["units"]} if "units" in v["attrs"] else {}), **_provenance(provenance)}
            data_vars[f"{v['name']}_std"] = (shaped(np.asarray(std, np.float32)), std_attrs, {"dtype": "float32"})
        if per_channel_mask:
            data_vars[f"{v['name']}_mask"] = (shaped(mask), _mask_attrs(label), {"dtype": "uint8"})
    if not per_channel_mask:
        v0 = desc["variables"][0]
        mdims = [d for d in v0["dims"] if d != v0["channel_dim"]]
        order = [d for d in v0["read_order"] if d != v0["channel_dim"]]
        m = mask[0, 0] if one_row else mask[:, 0]
        data_vars["mask"] = (xr.Variable(order, m).transpose(*mdims), _mask_attrs(" and ".join(names)), {"dtype": "uint8"})
    ds = xr.Dataset({k: var for k, (var, _, _) in data_vars.items()},
                    coords=_coords(xr, desc, index).coords)
    for k, (_, attrs, _) in data_vars.items():
        ds[k].attrs = attrs
    history = desc["attrs"].get("history", "")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ds.attrs = {**desc["attrs"], "history": (history + "\n" if history else "") +
                f"{stamp} cfgdiff infer: reconstructed from {provenance.get('input')} with {provenance.get('checkpoint')}"}
    encoding = {k: enc for k, (_, _, enc) in data_vars.items()}
    for name, spec in desc["coords"].items():  # numeric coordinates keep their stored dtype
        if np.dtype(spec["dtype"]).kind in "iuf":
            encoding[name] = {"dtype": spec["dtype"]}
    if out.suffix.lower() == ".zarr":
        require("zarr", f"--out {out}")
        ds.to_zarr(out, mode="w-", encoding=encoding, zarr_format=2, consolidated=True)  # v2: what most tools read
    else:
        ds.to_netcdf(out, engine="h5netcdf", encoding=encoding)


def _mask_attrs(label: str) -> dict[str, Any]:
    return {"long_name": f"observed pixels of {label}", "flag_values": np.array([0, 1], np.uint8),
            "flag_meanings": "reconstructed observed"}


def check_dataset_output(out: str) -> None:
    """The format libraries are there (before any work)."""
    require("xarray", f"--out {out}")
    require("zarr" if out.lower().endswith(".zarr") else "h5netcdf", f"--out {out}")


def with_known_values(rec: np.ndarray, index: np.ndarray, dirs: list[Path], dtype: np.dtype, tmp: Path,
                      batch_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction in the source's decoded ``dtype`` with the observed pixels taken from the stored
    condition (which keeps the source's dtype, so float64 values survive the float32 sampler bit for bit),
    and the (n, Cm, H, W) uint8 mask, both in the order of ``index``."""
    from ..data import iter_parquet_batches

    values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=dtype, shape=rec.shape)
    mask = None
    integer = np.issubdtype(dtype, np.integer)
    for d in dirs:
        for b in iter_parquet_batches(d, batch_rows, columns=["index", "condition", "mask"]):
            keep = np.isin(b["index"], index)
            if not keep.any():
                continue
            pos = np.searchsorted(index, b["index"][keep])
            m = np.asarray(b["mask"])[keep].astype(np.uint8)
            if mask is None:
                mask = np.zeros((len(index), *m.shape[1:]), np.uint8)
            mask[pos] = m
            x = np.asarray(rec[pos], np.float64)
            if integer:
                info = np.iinfo(dtype)
                x = np.clip(np.rint(x), info.min, info.max)
            x = x.astype(dtype)
            c = np.asarray(b["condition"])[keep]
            if c.shape[1] == x.shape[1]:  # a condition in target space: its known values are the source's
                known = np.broadcast_to(m.astype(bool), x.shape)
                x[known] = c[known].astype(dtype)
            values[pos] = x
    values.flush()
    return values, mask
