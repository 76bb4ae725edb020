"""The Ray Data read path yields exactly the local reader's rows, and small splits are materialized."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray.data.dataset import MaterializedDataset

from cfgdiff.convert import ConvertOptions, convert
from cfgdiff.data import DatasetMeta, decode_batch, read_split
from cluster.data import iter_block_batches, parquet_dataset

pytestmark = [pytest.mark.ray]


def _by_index(batches: list[dict]) -> dict[str, np.ndarray]:
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.argsort(cat["index"])
    return {k: v[order] for k, v in cat.items()}


def test_block_batches_match_the_local_reader(ray_session, tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    convert(str(tmp_path / "x.npy"), tmp_path / "o", ConvertOptions(val_fraction=0.0, degrade="drop:0.5"))
    split = DatasetMeta.load(tmp_path / "o").split_dir("train")
    local = read_split(split)
    ds = ray.data.read_parquet(str(split)).repartition(7).materialize()  # batches span block boundaries
    assert ds.num_blocks() == 7
    plain = list(iter_block_batches(ds, 32))
    assert [len(b["index"]) for b in plain] == [32] * 9 + [12]
    got = _by_index(plain)
    assert got.keys() == local.keys() and all(np.array_equal(got[k], local[k], equal_nan=k == "condition") for k in got)
    shuffled = list(iter_block_batches(ds, 32, drop_last=True, shuffle_seed=3))
    assert [len(b["index"]) for b in shuffled] == [32] * 9
    idx = np.concatenate([b["index"] for b in shuffled])
    assert len(np.unique(idx)) == 288 and not np.array_equal(idx, np.sort(idx)), "rows shuffled, none repeated"
    b = shuffled[0]  # rows stay paired across columns after the shuffle
    assert np.array_equal(b["target"], x[b["index"]])
    norm = DatasetMeta.load(tmp_path / "o").normalization
    assert decode_batch(b, norm)["x0"].shape == (32, 1, 8, 8)


def test_splits_that_fit_half_the_object_store_are_materialized(ray_session, tiny_data):
    split = DatasetMeta.load(tiny_data).split_dir("train")
    assert isinstance(parquet_dataset(split), MaterializedDataset)
    assert not isinstance(parquet_dataset(split, store_fraction=0.0), MaterializedDataset)
