"""Users' files end to end (#22): convert-free `infer` from NetCDF, Zarr and image folders on a real local Ray,
written back in the source's form, and read back with xarray and Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from cfgdiff.config import SamplerConfig
from cluster.infer import InferJob, run_inference
from tests.helpers import run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]
S = SamplerConfig(steps=3, w=1.0)


def _fields(n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16, 16))
    valid = (rng.uniform(size=x.shape) < 0.3).astype(np.uint8)
    return x, valid


def test_netcdf_round_trip_keeps_coords_attrs_and_float64_known_values(ray_session, tiny_checkpoint, tmp_path):
    x, valid = _fields()
    src = xr.Dataset({"obs": (("time", "lat", "lon"), np.where(valid == 1, x, np.nan), {"units": "K", "long_name": "temp"})},
                     coords={"time": ("time", np.arange(5) * 3.0, {"units": "hours since 2001-01-01"}),
                             "lat": ("lat", np.linspace(40, 41, 16), {"units": "degrees_north"}),
                             "lon": ("lon", np.linspace(2, 3, 16), {"units": "degrees_east"})}, attrs={"title": "t"})
    src.to_netcdf(tmp_path / "obs.nc", engine="h5netcdf", encoding={"obs": {"_FillValue": -999.0}})
    r = run_inference(InferJob(tiny_checkpoint, f"{tmp_path}/obs.nc:obs", str(tmp_path / "rec.nc"), sampler=S,
                               num_samples=2, batch_size=2))
    assert r["rows"] == 5
    a, b = xr.open_dataset(tmp_path / "obs.nc"), xr.open_dataset(tmp_path / "rec.nc")
    assert b.obs.dims == a.obs.dims and b.obs.dtype == np.float64 and b.obs.attrs["units"] == "K"
    for c in ("time", "lat", "lon"):
        assert b[c].equals(a[c]) and b[c].attrs == a[c].attrs
    known = valid == 1
    assert np.array_equal(b.obs.values[known], x[known]), "known pixels: the source's float64 values, bit for bit"
    assert np.isfinite(b.obs.values).all() and np.array_equal(b.mask.values, valid)
    assert (b.obs_std.values[known] == 0).all() and (b.obs_std.values[~known] > 0).mean() > 0.5
    assert b.obs.attrs["cfgdiff_num_samples"] == 2 and b.obs.attrs["cfgdiff_method"] == S.method


def test_zarr_with_mask_variable_and_limit(ray_session, tiny_checkpoint, tmp_path):
    x, valid = _fields(seed=1)
    xr.Dataset({"f": (("step", "y", "x"), x.astype(np.float32)), "ok": (("step", "y", "x"), valid)},
               coords={"step": np.arange(10, 15)}).to_zarr(tmp_path / "s.zarr", zarr_format=2, consolidated=True)
    run_inference(InferJob(tiny_checkpoint, f"{tmp_path}/s.zarr:f", str(tmp_path / "r.zarr"), mask=f"{tmp_path}/s.zarr:ok",
                           sampler=S, limit=3))
    b = xr.open_zarr(tmp_path / "r.zarr")
    assert b.f.shape == (3, 16, 16) and list(b.step.values) == [10, 11, 12]
    assert np.array_equal(b.f.values[valid[:3] == 1], x[:3].astype(np.float32)[valid[:3] == 1])


def test_png_folder_round_trip_keeps_names_and_bit_depth(ray_session, tiny_checkpoint, tmp_path, capsys):
    x, valid = _fields(n=3, seed=2)
    # 16-bit values above 255 (within the tiny GRF model's accepted range of known values: a format test)
    img = np.rint((x - x.min()) / (x.max() - x.min()) * 1500).astype(np.uint16)
    for d in ("imgs", "masks"):
        (tmp_path / d).mkdir()
    for i, name in enumerate(["b", "a", "c"]):
        Image.fromarray(img[i]).save(tmp_path / "imgs" / f"{name}.png")
        Image.fromarray(valid[i] * np.uint8(255)).save(tmp_path / "masks" / f"{name}.png")
    code, out, err = run_cli(["infer", tiny_checkpoint, "--input", str(tmp_path / "imgs"), "--mask", str(tmp_path / "masks"),
                              "--out", str(tmp_path / "rec") + "/", "--steps", "3"], capsys)
    assert code == 0, err
    for i, name in enumerate(["b", "a", "c"]):
        r = np.asarray(Image.open(tmp_path / "rec" / f"{name}.png"))
        assert r.dtype == np.uint16 and np.array_equal(r[valid[i] == 1], img[i][valid[i] == 1])
    # a folder output for a NetCDF input: refused before any work, nothing written
    xr.Dataset({"v": (("t", "y", "x"), x)}).to_netcdf(tmp_path / "v.nc", engine="h5netcdf")
    code, out, err = run_cli(["infer", tiny_checkpoint, "--input", f"{tmp_path}/v.nc:v", "--degrade", "drop:0.5",
                              "--out", str(tmp_path / "bad") + "/"], capsys)
    assert code == 2 and "a folder output writes one image per input image" in err and not (tmp_path / "bad").exists()
