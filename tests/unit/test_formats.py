"""Users' files (#22): real NetCDF, Zarr, HDF5, PNG and TIFF files written by their own libraries, read by
convert and written back; every bad input exits with one line and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr
from PIL import Image

from cfgdiff.convert import ConvertOptions, convert
from cfgdiff.data import read_split
from cfgdiff.errors import InputError
from cfgdiff.formats import open_source
from cfgdiff.formats.images import check_image_output, write_images
from cfgdiff.formats.writeback import output_kind, write_dataset


def _rows(d):
    """Every stored row of a converted dataset, in source order."""
    parts = [read_split(d / s) for s in ("train", "val") if any((d / s).glob("*.parquet"))]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cat["index"])
    return {k: v[order] for k, v in cat.items()}


def _ncfile(path, n=6, H=12, W=10, dtype=np.float64, fill=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, H, W)).astype(dtype)
    valid = (rng.uniform(size=x.shape) < 0.3).astype(np.uint8)
    obs = np.where(valid == 1, x, np.nan)
    ds = xr.Dataset({"vort": (("time", "lat", "lon"), x, {"units": "1/s", "long_name": "vorticity"}),
                     "obs": (("time", "lat", "lon"), obs, {"units": "1/s"}),
                     "valid": (("time", "lat", "lon"), valid)},
                    coords={"time": ("time", np.arange(n) * 6.0, {"units": "hours since 2001-01-01", "calendar": "standard"}),
                            "lat": ("lat", np.linspace(-5, 5, H), {"units": "degrees_north"}),
                            "lon": ("lon", np.linspace(0, 9, W).astype(np.float32), {"units": "degrees_east"})},
                    attrs={"title": "unit test", "history": "made by a test"})
    ds.to_netcdf(path, engine="h5netcdf", encoding={"obs": {"_FillValue": -9999.0}} if fill else {})
    return x, valid


def test_fillvalue_gives_the_explicit_mask_and_keeps_dtype(tmp_path):
    x, valid = _ncfile(tmp_path / "a.nc")
    raw = xr.open_dataset(tmp_path / "a.nc", mask_and_scale=False).obs.values
    assert (raw[valid == 0] == -9999.0).all(), "the file really holds the fill value"
    convert(None, tmp_path / "fill", ConvertOptions(condition=f"{tmp_path}/a.nc:obs", val_fraction=0))
    convert(None, tmp_path / "explicit", ConvertOptions(condition=f"{tmp_path}/a.nc:obs",
                                                         mask=f"{tmp_path}/a.nc:valid", val_fraction=0))
    a, b = _rows(tmp_path / "fill"), _rows(tmp_path / "explicit")
    assert np.array_equal(a["mask"], b["mask"]) and np.array_equal(a["mask"][:, 0], valid)
    assert a["condition"].dtype == np.float64
    assert np.array_equal(a["condition"][:, 0][valid == 1], x[valid == 1]), "float64 known values bit for bit"


def test_channels_from_variables_a_channel_dim_and_a_late_sample_dim(tmp_path):
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(2, 5, 8, 9)).astype(np.float32)
    uv = np.stack([u, v], 1)  # (time, component, y, x)
    xr.Dataset({"u": (("t", "y", "x"), u), "v": (("t", "y", "x"), v), "uv": (("t", "component", "y", "x"), uv),
                "late": (("y", "x", "t"), u.transpose(1, 2, 0))}).to_zarr(tmp_path / "s.zarr", zarr_format=2, consolidated=True)
    a = open_source(f"{tmp_path}/s.zarr:u,v", "target")
    b = open_source(f"{tmp_path}/s.zarr:uv", "target")
    c = open_source(f"{tmp_path}/s.zarr:late", "target", sample_dim="t")
    assert a.chw == b.chw == (2, 8, 9) and len(a) == 5 and c.chw == (1, 8, 9)
    assert np.array_equal(a.read(1, 4), uv[1:4]) and np.array_equal(b.read(0, 5), uv)
    assert np.array_equal(c.read(2, 5)[:, 0], u[2:5]), "the sample dim may be anywhere"


def test_hdf5_dataset_and_a_single_2d_field(tmp_path):
    x = np.random.default_rng(2).normal(size=(7, 2, 6, 5)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("grp/data", data=x)
    s = open_source(f"{tmp_path}/f.h5:/grp/data", "target")
    assert s.chw == (2, 6, 5) and np.array_equal(s.read(2, 6), x[2:6])
    xr.Dataset({"z": (("y", "x"), x[0, 0])}).to_netcdf(tmp_path / "one.nc", engine="h5netcdf")
    one = open_source(f"{tmp_path}/one.nc:z", "condition")
    assert len(one) == 1 and np.array_equal(one.read(0, 1)[0, 0], x[0, 0])


def _png_folder(d, imgs, names=None):
    d.mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(d / f"{(names or [f'im{k}' for k in range(len(imgs))])[i]}.png")


def test_image_folders_keep_dtype_and_pair_masks_by_name(tmp_path):
    rng = np.random.default_rng(3)
    grey16 = rng.integers(0, 65536, (4, 9, 7), dtype=np.uint16)
    rgb8 = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    masks = (rng.uniform(size=(4, 9, 7)) < 0.4).astype(np.uint8) * 255
    _png_folder(tmp_path / "g", list(grey16))
    _png_folder(tmp_path / "c", list(rgb8))
    _png_folder(tmp_path / "m", list(masks))
    (tmp_path / "t").mkdir()
    for i, a in enumerate(rng.normal(size=(4, 9, 7, 3)).astype(np.float32)):
        tifffile.imwrite(tmp_path / "t" / f"im{i}.tif", a, photometric="rgb")
    g, c = open_source(str(tmp_path / "g"), "target"), open_source(str(tmp_path / "c"), "target")
    assert g.dtype == np.uint16 and np.array_equal(g.read(0, 4)[:, 0], grey16)
    assert c.chw == (3, 9, 7) and np.array_equal(c.read(1, 3), rgb8[1:3].transpose(0, 3, 1, 2))
    t = open_source(str(tmp_path / "t"), "target")
    assert t.dtype == np.float32 and t.chw == (3, 9, 7)
    meta = convert(str(tmp_path / "c"), tmp_path / "ds", ConvertOptions(condition=str(tmp_path / "c"),
                                                                      mask=str(tmp_path / "m"), val_fraction=0))
    rows = _rows(tmp_path / "ds")
    assert np.array_equal(rows["mask"][:, 0], masks // 255) and rows["target"].dtype == np.uint8
    assert meta["source"]["files"] == [f"im{i}.png" for i in range(4)]


def test_alpha_channel_is_the_mask(tmp_path):
    rng = np.random.default_rng(4)
    rgba = rng.integers(0, 256, (3, 8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = (rng.uniform(size=(3, 8, 8)) < 0.5) * 255
    _png_folder(tmp_path / "a", list(rgba))
    convert(None, tmp_path / "ds", ConvertOptions(condition=str(tmp_path / "a"), mask="alpha", val_fraction=0))
    rows = _rows(tmp_path / "ds")
    assert np.array_equal(rows["mask"][:, 0], rgba[..., 3] // 255)
    known = rows["mask"][:, 0] == 1
    assert np.array_equal(rows["condition"].transpose(0, 2, 3, 1)[known], rgba[..., :3][known].astype(np.float32))
    with pytest.raises(InputError, match="transparent alpha channel; pass --mask alpha"):
        convert(None, tmp_path / "no", ConvertOptions(condition=str(tmp_path / "a"), val_fraction=0))
    assert not (tmp_path / "no").exists()


def _err(tmp_path, target, match, **opts):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=match) as e:
        convert(target, out, ConvertOptions(val_fraction=0, **opts))
    assert "\n" not in str(e.value) and not out.exists(), "one line, nothing written"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_bad_files_give_one_line(tmp_path):
    _ncfile(tmp_path / "a.nc")
    _err(tmp_path, f"{tmp_path}/a.nc:vorticity", r"no variable 'vorticity' in .*a.nc; it holds vort, obs, valid")
    _err(tmp_path, f"{tmp_path}/a.nc:vort", r"--sample-dim step: .*a.nc:vort has dimensions \(time, lat, lon\)",
         sample_dim="step")
    _err(tmp_path, f"{tmp_path}/a.nc", r"name the variable\(s\) as .*a.nc:VAR")
    (tmp_path / "bad.nc").write_bytes(b"CDF\x01" + b"\x00" * 20)
    _err(tmp_path, f"{tmp_path}/bad.nc:x", r"bad.nc: unreadable NetCDF file")
    rng = np.random.default_rng(5)
    _png_folder(tmp_path / "sizes", [rng.integers(0, 255, (8, 8), dtype=np.uint8),
                                     rng.integers(0, 255, (8, 9), dtype=np.uint8)])
    _err(tmp_path, str(tmp_path / "sizes"), r"im1.png: 8x9 pixels, but .*im0.png is 8x8; every image in")
    _png_folder(tmp_path / "ims", [rng.integers(0, 255, (8, 8), dtype=np.uint8) for _ in range(3)])
    _png_folder(tmp_path / "m_extra", [np.zeros((8, 8), np.uint8)] * 4)
    _err(tmp_path, None, r"m_extra/im3.png \(mask\): no image named im3", condition=str(tmp_path / "ims"),
         mask=str(tmp_path / "m_extra"))
    _png_folder(tmp_path / "m_short", [np.zeros((8, 8), np.uint8)] * 2)
    _err(tmp_path, None, r"ims/im2.png: no mask named im2", condition=str(tmp_path / "ims"), mask=str(tmp_path / "m_short"))
    _png_folder(tmp_path / "m16", [np.full((8, 8), 1000, np.uint16)] * 3)
    _err(tmp_path, None, r"im0.png \(mask\): a 16-bit mask must hold only 0 and 65535 \(or 0 and 1\), found 1000",
         condition=str(tmp_path / "ims"), mask=str(tmp_path / "m16"))
    (tmp_path / "corrupt").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "corrupt" / "a.png")
    (tmp_path / "corrupt" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 8)
    _err(tmp_path, str(tmp_path / "corrupt"), r"b.png: unreadable image")


def test_outputs_that_cannot_hold_the_result_are_refused():
    images = {"kind": "images", "files": ["a.png", "b.png"], "dtype": "uint8", "channels": 3}
    with pytest.raises(InputError, match="PNG holds 1 \\(grey\\) or 3 \\(RGB\\) channels; the model reconstructs 2"):
        check_image_output("recon/", images, 2)
    with pytest.raises(InputError, match="not a folder of images; use .npy, .parquet, .nc or .zarr"):
        check_image_output("recon/", {"kind": "xarray"}, 2)
    with pytest.raises(InputError, match="one image cannot hold every reconstructed row"):
        output_kind("velocity.png")
    assert [output_kind(o) for o in ("a.nc", "b.zarr", "c/", "d.npy", "e")] == ["xarray", "xarray", "images", "npy",
                                                                                "images"]


def test_dataset_written_back_with_dims_coords_attrs_and_encoding(tmp_path):
    x, valid = _ncfile(tmp_path / "a.nc", dtype=np.float32)
    src = open_source(f"{tmp_path}/a.nc:obs", "condition")
    desc = src.describe()
    index = np.array([1, 3, 4])
    values = np.where(valid[index] == 1, x[index], 0.5).astype(np.float32)[:, None]
    std = np.full_like(values, 0.25)
    write_dataset(tmp_path / "r.nc", desc, index, values, std, valid[index][:, None],
                  {"checkpoint": "ck", "method": "ddim", "steps": 20, "w": 1.0, "num_samples": 4, "seed": 0})
    src_ds, out = xr.open_dataset(tmp_path / "a.nc"), xr.open_dataset(tmp_path / "r.nc")
    assert out.obs.dims == src_ds.obs.dims and out.obs.attrs["units"] == "1/s"
    assert out.time.equals(src_ds.time.isel(time=index)) and out.lat.equals(src_ds.lat) and out.lon.dtype == np.float32
    assert out.obs.encoding["_FillValue"] == -9999.0 and out.obs.attrs["cfgdiff_steps"] == 20
    assert np.array_equal(out.obs.values[valid[index] == 1], x[index][valid[index] == 1])
    assert np.array_equal(out.mask.values, valid[index]) and float(out.obs_std.max()) == 0.25
    assert out.attrs["title"] == "unit test" and out.attrs["history"].startswith("made by a test\n")


def test_images_written_back_with_names_and_bit_depth(tmp_path):
    rec = np.random.default_rng(6).uniform(-10, 70000, (2, 1, 5, 6)).astype(np.float32)
    rec[0, 0, 0, 0] = 12345.0
    write_images(tmp_path / "o", {"files": ["x.png", "y.jpg"], "dtype": "uint16"}, np.array([1, 0]), rec, None)
    y, x = np.asarray(Image.open(tmp_path / "o" / "y.png")), np.asarray(Image.open(tmp_path / "o" / "x.png"))
    assert y.dtype == np.uint16 and y[0, 0] == 12345 and x.max() <= 65535 and x.min() >= 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x.png", "y.png"], "JPEG comes back as PNG"


def test_missing_extra_is_one_line(tmp_path):
    _ncfile(tmp_path / "a.nc")
    code = ("import sys; sys.modules['xarray'] = None\n"
            "from cli.main import main\n"
            f"main(['convert', '{tmp_path}/a.nc:vort', '--out', '{tmp_path}/o'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "needs xarray, part of the formats extra: pip install 'cfgdiff[formats]'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
