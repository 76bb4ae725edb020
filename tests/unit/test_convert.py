import json

import numpy as np
import pytest
import torch

from cfgdiff.convert import ConvertOptions, convert
from cfgdiff.data import DatasetMeta, decode_batch, iter_parquet_batches, read_split, rebatch, shuffle_rows
from cfgdiff.errors import InputError


def _read_all(out):
    parts = [read_split(out / s) for s in ("train", "val") if list((out / s).glob("*.parquet"))]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["index"])
    return {k: v[order] for k, v in merged.items()}


@pytest.mark.parametrize("layout", ["NHW", "NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_round_trip_exact_every_layout_and_dtype(tmp_path, layout, dtype):
    rng = np.random.default_rng(0)
    N, C, H, W = 37, (1 if layout == "NHW" else 2), 8, 12
    nchw = (rng.uniform(0, 100, (N, C, H, W))).astype(dtype)
    arr = {"NHW": nchw[:, 0], "NCHW": nchw, "NHWC": nchw.transpose(0, 2, 3, 1)}[layout]
    np.save(tmp_path / "x.npy", arr)
    out = tmp_path / "ds"
    meta = convert(str(tmp_path / "x.npy"), out, ConvertOptions(chunk_rows=10, val_fraction=0.2, seed=1))
    assert meta["counts"] == {"total": N, "train": N - 7, "val": 7}
    got = _read_all(out)
    assert got["target"].dtype == dtype and np.array_equal(got["target"], nchw)
    assert np.array_equal(got["index"], np.arange(N))
    # normalisation is inverted exactly (to float32 precision) and maps to [-1, 1]
    dm = DatasetMeta.load(out)
    dec = decode_batch(got, dm.normalization)
    assert dec["x0"].min() >= -1 - 1e-6 and dec["x0"].max() <= 1 + 1e-6
    back = dm.normalization.target.denormalize(dec["x0"]).numpy()
    np.testing.assert_allclose(back, nchw.astype(np.float64), rtol=1e-6, atol=1e-4)


def test_condition_mask_nan_and_zero_conventions(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 8, 8)).astype(np.float32)
    m = (rng.uniform(size=(20, 8, 8)) > 0.5).astype(np.uint8)
    c_nan = np.where(m == 1, x, np.nan).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "c.npy", c_nan)
    np.save(tmp_path / "m.npy", m)
    for name, opts in {"explicit": ConvertOptions(condition=str(tmp_path / "c.npy"), mask=str(tmp_path / "m.npy")),
                       "nan": ConvertOptions(condition=str(tmp_path / "c.npy"))}.items():
        out = tmp_path / name
        convert(str(tmp_path / "x.npy"), out, opts)
        got = _read_all(out)
        assert np.array_equal(got["mask"][:, 0], m), name
        dec = decode_batch(got, DatasetMeta.load(out).normalization)
        assert torch.all(dec["cond"][dec["mask"].expand_as(dec["cond"]) == 0] == 0)
    np.save(tmp_path / "cz.npy", np.where(m == 1, x, 0).astype(np.float32))
    convert(str(tmp_path / "x.npy"), tmp_path / "zeros",
            ConvertOptions(condition=str(tmp_path / "cz.npy"), mask_from_zeros=True))
    assert np.array_equal(_read_all(tmp_path / "zeros")["mask"][:, 0], m)


def test_npz_keys_and_shard_directory(tmp_path):
    x = np.arange(2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16)
    np.savez(tmp_path / "d.npz", target=x, other=x)
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "a.npy", x[:1])
    np.save(tmp_path / "shards" / "b.npy", x[1:])
    convert(f"{tmp_path / 'd.npz'}:target", tmp_path / "o1", ConvertOptions(val_fraction=0.0))
    convert(str(tmp_path / "shards"), tmp_path / "o2", ConvertOptions(val_fraction=0.0))
    assert np.array_equal(_read_all(tmp_path / "o1")["target"][:, 0], x)
    assert np.array_equal(_read_all(tmp_path / "o2")["target"][:, 0], x)


def test_degrade_spec_at_convert_and_metadata(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    meta = convert(str(tmp_path / "x.npy"), tmp_path / "o", ConvertOptions(degrade="drop:0.5", seed=2))
    doc = json.loads((tmp_path / "o" / "cfgdiff.json").read_text())
    assert doc == json.loads(json.dumps(meta)) and doc["degrade"] == "drop:0.5"
    assert len(doc["sha256"]["target"]) == 64 and doc["shapes"]["condition"] == [1, 16, 16]
    got = _read_all(tmp_path / "o")
    assert abs(got["mask"].mean() - 0.5) < 0.05
    known = got["mask"].astype(bool)
    assert np.array_equal(got["condition"][known], got["target"][known])
    assert np.all(np.isnan(got["condition"][~known]))


def test_streaming_reader_batches(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((50, 4, 4), np.float32))
    convert(str(tmp_path / "x.npy"), tmp_path / "o", ConvertOptions(val_fraction=0.0, row_group_mb=0.0001))
    batches = list(iter_parquet_batches(tmp_path / "o" / "train", batch_size=16))  # many tiny row groups
    assert [len(b["index"]) for b in batches] == [16, 16, 16, 2]
    assert np.array_equal(np.concatenate([b["index"] for b in batches]), np.arange(50))
    first = next(iter_parquet_batches(tmp_path / "o" / "train", batch_size=64))  # an early stop is clean
    assert len(first["index"]) == 50



def test_rebatch_slices_groups_into_exact_batches_and_shuffle_keeps_rows_paired():
    groups = [{"index": np.arange(a, b), "x": np.arange(a, b) * 10.0} for a, b in ((0, 5), (5, 6), (6, 23))]
    got = list(rebatch(iter(groups), 4))
    assert [len(b["index"]) for b in got] == [4, 4, 4, 4, 4, 3]
    assert np.array_equal(np.concatenate([b["index"] for b in got]), np.arange(23))
    assert all(np.array_equal(b["x"], b["index"] * 10.0) for b in got)
    assert np.shares_memory(got[2]["x"], groups[2]["x"]), "batches inside one group are views, not copies"
    assert [len(b["index"]) for b in rebatch(iter(groups), 4, drop_last=True)] == [4] * 5
    with pytest.raises(ValueError, match="batch_size"):
        next(rebatch(iter(groups), 0))
    g = {"index": np.arange(100), "x": np.arange(100) * 10.0}
    a, b = shuffle_rows(g, np.random.default_rng(1)), shuffle_rows(g, np.random.default_rng(1))
    assert np.array_equal(a["index"], b["index"]) and not np.array_equal(a["index"], g["index"])
    assert np.array_equal(np.sort(a["index"]), g["index"]) and np.array_equal(a["x"], a["index"] * 10.0)


BAD = {
    "mismatched N": (lambda d: (np.zeros((4, 8, 8)), np.zeros((5, 8, 8)), None), "N=5"),
    "mismatched spatial": (lambda d: (np.zeros((4, 8, 8)), np.zeros((4, 8, 9)), None), "spatial shape"),
    "non-binary mask": (lambda d: (np.zeros((4, 8, 8)), np.zeros((4, 8, 8)), np.full((4, 8, 8), 0.5)), "binary"),
    "nan target": (lambda d: (np.full((4, 8, 8), np.nan), None, None), "NaN or inf in the target at row 0"),
    "empty": (lambda d: (np.zeros((0, 8, 8)), None, None), "empty array"),
    "inf condition at a known pixel": (lambda d: (np.zeros((4, 8, 8)), np.where(np.arange(4)[:, None, None] == 2, np.inf,
                                                                            np.zeros((4, 8, 8))), np.ones((4, 8, 8))),
                                       "inf in the condition at row 2"),
    "impossible layout": (lambda d: (np.zeros((4, 8, 8, 8)), None, None), "cannot tell NCHW from NHWC"),
    "mask channels": (lambda d: (np.zeros((4, 2, 8, 8)), np.zeros((4, 2, 8, 8)), np.ones((4, 3, 8, 8))),
                      "has 3 channels; expected 1 .one mask per pixel. or 2 .one per target channel."),
    "per-channel mask, other condition channels": (
        lambda d: (np.zeros((4, 2, 8, 8)), np.zeros((4, 1, 8, 8)), np.ones((4, 2, 8, 8))),
        "a per-channel mask needs a condition with the target's 2 channels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_clear_error_and_nothing_left(tmp_path, case):
    make, match = BAD[case]
    x, c, m = make(tmp_path)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    opts = {}
    if c is not None:
        np.save(tmp_path / "c.npy", c.astype(np.float32))
        opts["condition"] = str(tmp_path / "c.npy")
    if m is not None:
        np.save(tmp_path / "m.npy", m.astype(np.float32))
        opts["mask"] = str(tmp_path / "m.npy")
    with pytest.raises(InputError, match=match):
        convert(str(tmp_path / "x.npy"), tmp_path / "out", ConvertOptions(**opts))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_truncated_file_bad_spec_and_layout_flag(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((40, 8, 8), np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.npy: unreadable or truncated"):
        convert(str(tmp_path / "t.npy"), tmp_path / "out")
    with pytest.raises(InputError, match="unknown kind"):
        convert(str(tmp_path / "x.npy"), tmp_path / "out", ConvertOptions(degrade="blur:3"))
    with pytest.raises(InputError, match="--layout NCHW needs a 4-D array"):
        convert(str(tmp_path / "x.npy"), tmp_path / "out", ConvertOptions(layout="NCHW"))
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(InputError, match="junk.npy: not a .npy file"):
        convert(str(tmp_path / "junk.npy"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_normalization_records_data_range_for_x0_clipping(tmp_path):
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for kind in ("minmax", "meanstd"):
        convert(str(tmp_path / "x.npy"), tmp_path / kind, ConvertOptions(normalization=kind, val_fraction=0.0))
        aff = DatasetMeta.load(tmp_path / kind).normalization.target
        lo, hi = aff.clip_bounds()
        n = aff.normalize(torch.from_numpy(x))
        torch.testing.assert_close(lo.flatten(), n.amin().reshape(1), atol=1e-5, rtol=0)
        torch.testing.assert_close(hi.flatten(), n.amax().reshape(1), atol=1e-5, rtol=0)
        if kind == "minmax":
            torch.testing.assert_close(lo.flatten(), torch.tensor([-1.0]), atol=1e-6, rtol=0)
        else:
            assert abs(float(n.std()) - 1) < 0.01 and float(hi) > 2.5


@pytest.mark.parametrize("codec", ["auto", "lz4", "zstd", "none"])
def test_every_codec_round_trips_and_arrow_tables_decode_like_numpy(tmp_path, codec):
    import pyarrow.parquet as pq

    x = np.random.default_rng(3).normal(size=(30, 2, 4, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    meta = convert(str(tmp_path / "x.npy"), tmp_path / "o", ConvertOptions(val_fraction=0.0, degrade="drop:0.5",
                                                                           compression=codec))
    assert meta["compression"] == codec
    f = next((tmp_path / "o" / "train").glob("*.parquet"))
    rg = pq.ParquetFile(f).metadata.row_group(0)
    used = {rg.column(i).path_in_schema: rg.column(i).compression.lower() for i in range(rg.num_columns)}
    want = {"auto": {"index": "lz4", "target": "uncompressed", "condition": "uncompressed", "mask": "lz4"},
            "none": dict.fromkeys(used, "uncompressed")}.get(codec, dict.fromkeys(used, codec))
    assert used == want
    table = pq.read_table(f)  # what Ray Data hands a batch_format="pyarrow" consumer
    assert table.schema.field("target").metadata[b"cfgdiff.shape"] == b"[2, 4, 6]"
    norm = DatasetMeta.load(tmp_path / "o").normalization
    a, b = decode_batch(table, norm), decode_batch(read_split(tmp_path / "o" / "train"), norm)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(read_split(tmp_path / "o" / "train")["target"], x)


def test_datasets_with_arrow_fixed_shape_tensor_columns_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cfgdiff.data import table_to_numpy

    x = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 1, 3, 4)
    t = pa.table({"index": pa.array(np.arange(5)), "target": pa.FixedShapeTensorArray.from_numpy_ndarray(x)})
    pq.write_table(t, tmp_path / "old.parquet")
    got = table_to_numpy(pq.read_table(tmp_path / "old.parquet"))
    assert np.array_equal(got["target"], x)


def test_unknown_codec_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.float32))
    with pytest.raises(InputError, match="--compression 'brotli'"):
        convert(str(tmp_path / "x.npy"), tmp_path / "o", ConvertOptions(compression="brotli"))
    assert not (tmp_path / "o").exists()


def test_tensor_columns_decode_zero_copy_and_carry_no_statistics(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cfgdiff.data import table_to_numpy, tensor_field

    x = np.random.default_rng(0).normal(size=(6, 1, 4, 4)).astype(np.float32)
    field, arr = tensor_field("target", x)
    t = pa.Table.from_arrays([pa.array(np.arange(6)), arr], schema=pa.schema([pa.field("index", pa.int64()), field]))
    got = table_to_numpy(t)["target"]  # one chunk: a view of the Arrow buffer, no copy
    assert np.array_equal(got, x) and np.shares_memory(got, x)
    two = pa.Table.from_batches(t.to_batches(max_chunksize=4))  # several chunks: combined (a copy), same values
    assert two.column("target").num_chunks == 2 and np.array_equal(table_to_numpy(two)["target"], x)

    np.save(tmp_path / "x.npy", x)
    convert(str(tmp_path / "x.npy"), tmp_path / "o", ConvertOptions(val_fraction=0.0))
    rg = pq.ParquetFile(next((tmp_path / "o" / "train").glob("*.parquet"))).metadata.row_group(0)
    stats = {rg.column(i).path_in_schema: rg.column(i).is_stats_set for i in range(rg.num_columns)}
    assert stats == {"index": True, "target": False}


def test_damaged_shard_named_by_the_local_reader(tmp_path):
    """#16.18: evaluate and infer read through this reader; a damaged shard is named, not a bare pyarrow error."""
    from cfgdiff.data import read_split

    np.save(tmp_path / "x.npy", np.zeros((40, 8, 8), np.float32))
    convert(str(tmp_path / "x.npy"), tmp_path / "ds", ConvertOptions(val_fraction=0.0))
    shard = sorted((tmp_path / "ds" / "train").glob("*.parquet"))[0]
    shard.write_bytes(b"PAR1" + b"\0" * 64 + shard.read_bytes()[-8:])
    with pytest.raises(InputError, match=rf"{shard}: unreadable Parquet shard"):
        read_split(tmp_path / "ds" / "train")


def test_rows_poisoned_after_convert_are_refused_where_decoded(tmp_path):
    """#16.11: a shard whose values turned NaN after convert (damaged bytes, footer intact) is refused by the
    reader, naming the row's index; a condition with inf, or NaN where the mask says known, likewise."""
    import pyarrow.parquet as pq

    from cfgdiff.data import DatasetMeta, decode_batch, read_split, table_to_numpy, tensor_field

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(40, 8, 8)).astype(np.float32))
    convert(str(tmp_path / "x.npy"), tmp_path / "ds", ConvertOptions(degrade="drop:0.5", val_fraction=0.0))
    meta = DatasetMeta.load(tmp_path / "ds")
    shard = sorted((tmp_path / "ds" / "train").glob("*.parquet"))[0]
    t = pq.read_table(shard)
    cols = table_to_numpy(t)
    assert decode_batch(cols, meta.normalization)["x0"].isfinite().all()  # clean rows decode
    for col, value, where in (("target", np.nan, None), ("condition", np.inf, None), ("condition", np.nan, "known")):
        bad = cols[col].copy()
        if where == "known":
            bad[5][np.broadcast_to(cols["mask"][5].astype(bool), bad[5].shape)] = value
        else:
            bad[5] = value
        f, arr = tensor_field(col, bad)
        pq.write_table(t.set_column(t.schema.get_field_index(col), f, arr), shard)
        idx = int(cols["index"][5])
        with pytest.raises(InputError, match=rf"--data ds: .* at row {idx}\b"):
            decode_batch(read_split(shard.parent), meta.normalization, where="--data ds")


def test_per_channel_masks_are_kept_per_channel(tmp_path):
    """#19.3: a (N, C, H, W) mask is stored per channel; unknown values of one channel become NaN while the
    other channel's value at that pixel is kept."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 5, 7)).astype(np.float32)
    m = (rng.uniform(size=x.shape) < 0.5).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "c.npy", x)
    np.save(tmp_path / "m.npy", m)
    convert(str(tmp_path / "x.npy"), tmp_path / "ds", ConvertOptions(condition=str(tmp_path / "c.npy"),
                                                                  mask=str(tmp_path / "m.npy"), val_fraction=0.0))
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.mask_channels == 2 and meta.doc["shapes"]["mask"] == [2, 5, 7]
    got = _read_all(tmp_path / "ds")
    assert np.array_equal(got["mask"], m)
    assert np.array_equal(got["condition"][m == 1], x[m == 1]) and np.isnan(got["condition"][m == 0]).all()
    b = decode_batch(got, meta.normalization)
    assert b["mask"].shape == (6, 2, 5, 7)
    np.save(tmp_path / "m1.npy", m[:, :1])  # per pixel: one channel
    convert(str(tmp_path / "x.npy"), tmp_path / "ds1", ConvertOptions(condition=str(tmp_path / "c.npy"),
                                                                   mask=str(tmp_path / "m1.npy"), val_fraction=0.0))
    assert DatasetMeta.load(tmp_path / "ds1").mask_channels == 1
