"""Users' files in and out: the one place that knows file formats besides ``.npy``/``.npz``.

``open_source(spec, role)`` turns what a user names on the command line into an array source with
the interface of ``cfgdiff.data.ArraySource`` (``len``, ``chw``, ``dtype``, ``read(start, stop)`` in
(n, C, H, W), ``files``, ``name``, ``sources()``, ``describe()``):

====================================  =========================================================
spec                                  source
====================================  =========================================================
``x.npy``, ``x.npz[:KEY]``, ``dir/``  ``ArraySource`` (memory-mapped; a directory of .npy shards)
``dir/`` of .png/.jpg/.tif            ``images.ImageFolderSource`` (one row per file, by name)
``data.nc:var[,var]``                 ``scientific.XarraySource`` (NetCDF; variables stacked as channels)
``store.zarr:u,v``                    ``scientific.XarraySource`` (Zarr)
``file.h5:/group/dataset``            ``ArraySource`` over the h5py dataset (sliced lazily)
====================================  =========================================================

``describe()`` returns what ``writeback`` needs to put a reconstruction back in the source's form
(dimensions, coordinates and attributes; file names and bit depth), stored as ``source`` in cfgdiff.json.
The format libraries (xarray, h5netcdf, h5py, zarr, tifffile) are the ``formats`` extra and are
imported only when such a file is named.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..data import ArraySource
from ..errors import InputError

SCIENTIFIC = (".nc", ".nc4", ".cdf", ".netcdf", ".zarr")
HDF5 = (".h5", ".hdf5", ".he5")
IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
EXTRA = "pip install 'cfgdiff[formats]'"


def require(module: str, what: str):
    """Import an optional format library, or exit 2 saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{what}: reading or writing this format needs {module}, part of the formats extra: "
                         f"{EXTRA}") from None


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``path[:key]`` -> (path, key) for the formats that name a variable or dataset inside a file."""
    for sep in (":/", ":"):
        head, _, key = spec.rpartition(sep)
        if head and Path(head).suffix.lower() in SCIENTIFIC + HDF5 + (".npz",):
            return Path(head), (key if sep == ":" else "/" + key)
    return Path(spec), None


def kind_of(spec: str) -> str:
    """npy, images, xarray or hdf5: which reader a spec goes to (without opening it)."""
    path, _ = split_spec(spec)
    suffix = path.suffix.lower()
    if suffix in SCIENTIFIC:
        return "xarray"
    if suffix in HDF5:
        return "hdf5"
    if path.is_dir():
        has_npy = any(path.glob("*.npy"))
        has_img = any(f.suffix.lower() in IMAGES for f in path.iterdir())
        if has_npy and has_img:
            raise InputError(f"{path}: holds both .npy shards and images; put them in separate folders")
        return "images" if has_img else "npy"
    return "npy"


def open_source(spec: str, role: str, layout: str | None = None, force_layout: bool = False,
                sample_dim: str | None = None, alpha: bool = False):
    """The array source for a user's spec (see the module docstring); errors name the spec and role."""
    kind = kind_of(spec)  # sample_dim applies to NetCDF/Zarr only (convert refuses it when no input is one)
    if kind == "xarray":
        from .scientific import XarraySource
        return XarraySource(spec, role, sample_dim)
    if kind == "hdf5":
        from .scientific import open_hdf5
        return open_hdf5(spec, role, layout, force_layout)
    if kind == "images":
        from .images import ImageFolderSource
        return ImageFolderSource(spec, role, alpha=alpha)
    return ArraySource(spec, role, layout, force_layout)


def input_paths(spec: str) -> Path:
    """The file or folder a spec reads (to refuse an --out that would replace it)."""
    return split_spec(spec)[0]
