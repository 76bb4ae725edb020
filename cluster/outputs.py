"""What ``cfgdiff infer`` writes: reconstructions as .npy/.parquet, NetCDF/Zarr with the source's
coordinates, or one image per input image, plus OUT.metrics.json and the labelled OUT.grid.png.

Everything is first written under the job's temporary directory and moved into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cfgdiff import fsio
from cfgdiff.data import DatasetMeta, read_split
from cfgdiff.degrade import row_kinds
from cfgdiff.errors import InputError
from cfgdiff.formats.images import check_image_output, write_images
from cfgdiff.formats.writeback import check_dataset_output, generic_source, output_kind, with_known_values, write_dataset


def side_file(out: Path, suffix: str) -> Path:
    return out.with_name(out.stem + suffix)


def outputs(job) -> list[str]:
    """Every path ``write_outputs`` may create (checked for --overwrite before any work); URIs for remote --out."""
    out = job.out.rstrip("/\\")
    parent, name = (out.rsplit("/", 1) if fsio.is_uri(out) else (str(Path(out).parent), Path(out).name))
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
    sides = [".metrics.json", ".grid.png"] + ([".std.npy", ".samples.npy"] if job.num_samples > 1 and suffix == ".npy"
                                              else [])
    return [out] + [fsio.join(parent, stem + s) for s in sides]


def check_existing(job) -> None:
    """No output is there already (an empty folder does not count), unless --overwrite."""
    def taken(p: str) -> bool:
        if fsio.is_uri(p):
            return fsio.exists(p)
        return Path(p).exists() and not (Path(p).is_dir() and not any(Path(p).iterdir()))

    existing = [p for p in outputs(job) if taken(p)]
    if existing and not job.overwrite:
        raise InputError(f"--out {job.out}: {existing[0]} exists; pass --overwrite to replace it")


def check_output(job, meta: DatasetMeta, channels: int) -> None:
    """The output format can hold the result, and the libraries for it are there."""
    kind = output_kind(job.out)
    if kind == "xarray":
        check_dataset_output(job.out)
    elif kind == "images":
        check_image_output(job.out, meta.doc.get("source"), channels)
    check_existing(job)


def rows_in(batch: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of a raw batch whose index is in the sorted ``index`` (``--limit``)."""
    keep = np.isin(batch["index"], index)
    return batch if keep.all() else {k: v[keep] for k, v in batch.items()}


def _move(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)


def write_outputs(job, meta: DatasetMeta, index, rec, std, smp, tmp, dirs, metrics, data_range, degraded) -> None:
    out = Path(job.out.rstrip("/\\"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rec.flush()
    kind = output_kind(job.out)
    if kind == "npy":
        os.replace(tmp / "rec.npy", out)
        if std is not None:
            std.flush()
            smp.flush()
            os.replace(tmp / "std.npy", side_file(out, ".std.npy"))
            os.replace(tmp / "smp.npy", side_file(out, ".samples.npy"))
    elif kind == "parquet":
        part = tmp / "out.parquet"
        with pq.ParquetWriter(part, _schema(rec, std, smp), compression="zstd") as w:
            for a in range(0, len(index), 1024):
                cols = {"index": pa.array(index[a:a + 1024]),
                        "reconstruction": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(rec[a:a + 1024]))}
                if std is not None:
                    cols["std"] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(std[a:a + 1024]))
                    cols["samples"] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(smp[a:a + 1024]))
                w.write_table(pa.table(cols))
        os.replace(part, out)
    elif kind == "xarray":
        desc = meta.doc.get("source") or generic_source(rec.shape[1])
        dtype = np.dtype(desc["variables"][0]["dtype"]) if desc.get("kind") != "arrays" else np.dtype(np.float32)
        values, mask = with_known_values(rec, index, dirs, dtype, tmp)
        s = job.sampler
        provenance = {"checkpoint": str(job.checkpoint), "input": str(job.input), "method": s.method,
                      "steps": s.steps, "w": s.w, "eta": s.eta, "num_samples": job.num_samples, "seed": job.seed}
        staged = tmp / ("staged" + out.suffix)
        write_dataset(staged, desc, index, values, std, mask, provenance)
        _move(staged, out)
    else:
        desc = meta.doc["source"]
        staged = tmp / "staged-images"
        write_images(staged, desc, index, rec, std)
        _move(staged, out)
    _grid(job, index, rec, std, dirs, side_file(out, ".grid.png"), degraded)
    doc = {"rows": len(index), "num_samples": job.num_samples, "sampler": job.sampler.__dict__, "metrics": metrics,
           "units": "psnr/ssim in your units against the data range stated here; mae_missing in normalised "
                    "target units; known_error in your units",
           "data_range": list(data_range)}
    tmp_json = tmp / "metrics.json"
    tmp_json.write_text(json.dumps(doc, indent=2, default=list))
    os.replace(tmp_json, side_file(out, ".metrics.json"))


def _schema(rec, std, smp) -> pa.Schema:
    f = [pa.field("index", pa.int64()), pa.field("reconstruction", pa.fixed_shape_tensor(pa.float32(), rec.shape[1:]))]
    if std is not None:
        f += [pa.field("std", pa.fixed_shape_tensor(pa.float32(), std.shape[1:])),
              pa.field("samples", pa.fixed_shape_tensor(pa.float32(), smp.shape[1:]))]
    return pa.schema(f)


def _grid(job, index, rec, std, dirs, path: Path, degraded: tuple[str, int] | None) -> None:
    """observed | mask | reconstruction | std | target (when known) for the first rows, labelled."""
    from .plots import panel_grid  # matplotlib loads only when a grid is drawn
    raw = rows_in(read_split(dirs[0], limit=job.grid_rows), index)
    n = len(raw["index"])
    if n == 0:
        return
    order = np.searchsorted(index, raw["index"])  # slots of these rows in the output
    rows = []
    for i in range(n):
        j = order[i]
        cond = raw["condition"][i].astype(np.float32)
        mask = raw["mask"][i] if "mask" in raw else np.ones_like(cond[:1])
        observed = np.where(mask.astype(bool), cond, np.nan) if mask.any() else cond
        row = [observed, mask, rec[j], std[j] if std is not None else None]
        if "target" in raw:
            row.append(raw["target"][i])
        rows.append(row)
    kinds = row_kinds(degraded[0], degraded[1], raw["index"]) if degraded else None
    labels = [f"row {int(raw['index'][i])}" + (f"\n{kinds[i]}" if kinds else "") for i in range(n)]
    columns = ["observed", "mask", "reconstruction", "std (K samples)"] + (["target"] if "target" in raw else [])
    panel_grid(path, rows, columns, labels, ["value", "mask", "value", "std"] + (["value"] if "target" in raw else []),
               title="grey = not observed" + ("" if std is not None else "; std needs --num-samples > 1"))
