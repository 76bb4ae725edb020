"""NetCDF and Zarr variables (through xarray) and HDF5 datasets (through h5py) as rows.

``data.nc:vorticity`` or ``store.zarr:u,v`` names variables of one dataset; several are stacked as
channels. The sample dimension (``--sample-dim``, default the first) becomes rows; the last two of the
other dimensions are H and W; at most one dimension is left, and it becomes channels (for example
``component``). A 2-D variable is one row. Slices are read lazily (``cache=False``), so memory stays
bounded by ``--chunk-rows`` for any file size. ``_FillValue`` (and ``missing_value``) decode to NaN,
which is the NaN convention for missing pixels. Coordinates are read raw (``decode_times=False``), so
a time axis goes back to the file with its numbers and its ``units``/``calendar`` attributes unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import MIN_SIDE, ArraySource
from ..errors import InputError
from . import require, split_spec
from .images import _first_line

ENCODING_KEYS = ("dtype", "_FillValue", "missing_value", "scale_factor", "add_offset")


def jsonable(v: Any) -> Any:
    """Attribute and coordinate values as JSON (numpy scalars and arrays to Python, bytes to text)."""
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()] if v.dtype.kind in "SUO" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return v


def open_dataset(path: Path, what: str):
    """An xarray Dataset over a NetCDF file or a Zarr store, lazily, with raw coordinates."""
    xr = require("xarray", what)
    if not path.exists():
        raise InputError(f"{path}: no such file ({what})")
    engine = "zarr" if path.suffix.lower() == ".zarr" else None
    if engine == "zarr":
        require("zarr", what)
    try:
        return xr.open_dataset(path, engine=engine, decode_times=False, decode_timedelta=False, cache=False,
                               mask_and_scale=True)
    except Exception as e:  # backends raise OSError, ValueError, KeyError... for damaged files
        kind = "Zarr store" if engine else "NetCDF file"
        raise InputError(f"{path}: unreadable {kind} ({_first_line(e)})") from None


class XarraySource:
    """Variables of a NetCDF/Zarr dataset as (n, C, H, W) rows (see the module docstring)."""

    def __init__(self, spec: str, role: str, sample_dim: str | None = None):
        self.spec, self.role, self.name = spec, role, spec
        path, key = split_spec(spec)
        self.path = path
        ds = open_dataset(path, f"{spec} ({role})")
        names = [v for v in (key or "").split(",") if v]
        if not names:
            have = ", ".join(ds.data_vars) or "none"
            raise InputError(f"{spec} ({role}): name the variable(s) as {path}:VAR[,VAR]; the file holds {have}")
        for v in names:
            if v not in ds.variables:
                raise InputError(f"{spec} ({role}): no variable {v!r} in {path}; it holds "
                                 f"{', '.join(ds.data_vars) or 'no data variables'}")
        self.ds, self.vars = ds, [ds[v] for v in names]
        dims0 = self.vars[0].dims
        if sample_dim is not None and sample_dim not in dims0:
            raise InputError(f"--sample-dim {sample_dim}: {path}:{names[0]} has dimensions ({', '.join(dims0)})")
        self.sample_dim = sample_dim if sample_dim is not None else (dims0[0] if len(dims0) >= 3 else None)
        self.layout = [self._layout(v) for v in self.vars]
        self.dtype = np.result_type(*[v.dtype for v in self.vars])
        if not (np.issubdtype(self.dtype, np.floating) or np.issubdtype(self.dtype, np.integer)):
            raise InputError(f"{spec} ({role}): dtype {self.dtype} is not a float or integer")
        self.files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]

    def _layout(self, v) -> tuple[tuple[str, ...], str | None]:
        """(dims in read order: sample, channel, y, x, without absent ones; the channel dim or None)."""
        dims = v.dims
        other = [d for d in dims if d != self.sample_dim]
        if len(other) < 2 or len(other) > 3:
            raise InputError(f"{self.path}:{v.name} ({self.role}): dimensions ({', '.join(dims)}); expected "
                             "(sample, [channel], y, x), with --sample-dim naming the sample dimension")
        if self.sample_dim is not None and self.sample_dim not in dims:
            raise InputError(f"{self.path}:{v.name} ({self.role}): has no dimension {self.sample_dim!r} "
                             f"(dimensions {', '.join(dims)})")
        spatial, chan = other[-2:], (other[0] if len(other) == 3 else None)
        ref = self.vars[0]
        for d in ([self.sample_dim] if self.sample_dim else []) + spatial:
            if d not in ref.dims or ref.sizes[d] != v.sizes[d]:
                raise InputError(f"{self.path}:{v.name} ({self.role}): dimension {d} does not match "
                                 f"{self.path}:{ref.name}'s")
        H, W = (v.sizes[d] for d in spatial)
        if min(H, W) < MIN_SIDE:
            raise InputError(f"{self.path}:{v.name} ({self.role}): fields are {H}x{W}; cfgdiff needs at least "
                             f"{MIN_SIDE}x{MIN_SIDE}")
        order = tuple(d for d in ([self.sample_dim] if self.sample_dim else []) + ([chan] if chan else []) + spatial)
        return order, chan

    def __len__(self) -> int:
        return int(self.vars[0].sizes[self.sample_dim]) if self.sample_dim else 1

    @property
    def chw(self) -> tuple[int, int, int]:
        C = sum(v.sizes[chan] if chan else 1 for v, (_, chan) in zip(self.vars, self.layout))
        order = self.layout[0][0]
        return (C, self.vars[0].sizes[order[-2]], self.vars[0].sizes[order[-1]])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as (n, C, H, W): only these slices are read from disk."""
        parts = []
        for v, (order, chan) in zip(self.vars, self.layout):
            sel = v.isel({self.sample_dim: slice(start, stop)}) if self.sample_dim else v
            try:
                a = sel.transpose(*order).values
            except Exception as e:
                raise InputError(f"{self.path}:{v.name} ({self.role}): unreadable rows {start}-{stop - 1} "
                                 f"({_first_line(e)})") from None
            a = a if self.sample_dim else a[None]
            parts.append(a if chan else a[:, None])
        out = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return np.ascontiguousarray(out, dtype=self.dtype)

    def sources(self) -> list[dict[str, Any]]:
        return [{"path": str(self.path), "variables": [str(v.name) for v in self.vars], "shape": [len(self), *self.chw],
                 "dtype": str(self.dtype)}]

    def describe(self) -> dict[str, Any]:
        """Dimensions, coordinates, attributes and encodings, for writing results back (writeback.py)."""
        used = {d for v in self.vars for d in v.dims}
        coords = {}
        for name, c in self.ds.coords.items():
            if set(c.dims) <= used and c.size <= 1_000_000:
                coords[str(name)] = {"dims": list(c.dims), "values": jsonable(c.values), "dtype": str(c.dtype),
                                     "attrs": jsonable(dict(c.attrs))}
        variables = []
        for v, (order, chan) in zip(self.vars, self.layout):
            enc = {k: jsonable(v.encoding[k]) for k in ENCODING_KEYS if k in v.encoding}
            if "dtype" in enc:
                enc["dtype"] = str(np.dtype(v.encoding["dtype"]))
            variables.append({"name": str(v.name), "dims": list(v.dims), "read_order": list(order),
                              "channel_dim": chan, "channels": int(v.sizes[chan]) if chan else 1,
                              "dtype": str(v.dtype), "attrs": jsonable(dict(v.attrs)), "encoding": enc})
        return {"kind": "xarray", "path": str(self.path), "format": "zarr" if self.path.suffix == ".zarr" else "netcdf",
                "sample_dim": self.sample_dim, "variables": variables, "coords": coords,
                "attrs": jsonable(dict(self.ds.attrs))}


def open_hdf5(spec: str, role: str, layout: str | None, force_layout: bool) -> ArraySource:
    """``file.h5:/group/dataset``: an (N,H,W), (N,C,H,W) or (N,H,W,C) dataset, sliced lazily by h5py."""
    h5py = require("h5py", spec)
    path, key = split_spec(spec)
    if not path.is_file():
        raise InputError(f"{path}: no such file ({role})")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: unreadable HDF5 file ({_first_line(e)})") from None
    if not key:
        raise InputError(f"{spec} ({role}): name the dataset as {path}:/GROUP/DATASET")
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        found = []
        f.visititems(lambda n, o: found.append("/" + n) if isinstance(o, h5py.Dataset) else None)
        raise InputError(f"{spec} ({role}): no dataset {key!r} in {path}; it holds {', '.join(found[:10]) or 'none'}")
    src = ArraySource.from_parts(spec, role, [obj], [path], layout, force_layout)
    src.h5file = f  # keep the file open while the source lives
    return src
