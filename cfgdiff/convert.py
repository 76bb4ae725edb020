"""Paired numpy arrays -> validated, normalised-on-read, sharded Parquet (``cfgdiff convert``).

Two streaming passes over memory-mapped inputs, ``chunk_rows`` rows at a time, so peak memory is
bounded by the chunk, not the file:
  1. validate (finite targets, binary masks, known pixels have finite conditions), per-channel
     statistics, source checksums;
  2. derive masks, degrade if asked, split train/val (seeded) and write Parquet row groups
     (by default float columns uncompressed, masks and integers lz4; see ``_codecs``).
Output goes to a temporary sibling directory that is renamed to ``out`` only on success.

Which pixels are known: an explicit mask first; else NaN in the condition; else (with
``mask_from_zeros``) condition == 0 in every channel; else none (mask 0: the condition guides the
network but nothing is projected). Where the mask says missing and the condition is in target
space, the stored condition holds NaN.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import fsio
from .config import FORMAT_VERSION
from .data import META, cell_dtype, tensor_field
from .degrade import degrade_raw, parse_spec
from .errors import InputError
from .formats import input_paths, kind_of, open_source
from .formats.images import check_paired
from .normalize import Normalization, RunningStats
from .validate import check_observations, check_targets

Progress = Callable[[str, int, int], None]
COMPRESSIONS = ("auto", "lz4", "zstd", "none")


def _codecs(schema: pa.Schema, compression: str) -> str | dict[str, str]:
    """Per-column codecs. ``auto``: float tensors uncompressed, everything else (masks, integers) lz4.

    Measured on float32 fields (bench/RESULTS.md): lz4 saves ~0% and zstd ~7%, while reading lz4 costs
    ~1.2x and zstd ~5x the time of plain bytes; masks and integer images do compress, cheaply with lz4.
    """
    if compression != "auto":
        return compression
    is_float = lambda f: (dt := cell_dtype(f)) is not None and dt.kind == "f"
    return {f.name: "none" if is_float(f) else "lz4" for f in schema}


@dataclass(frozen=True)
class ConvertOptions:
    condition: str | None = None  # path (or path.npz:key, data.nc:var, an image folder) of the observed condition
    mask: str | None = None  # path of the mask (1 = known), or "alpha": the condition images' alpha channel
    sample_dim: str | None = None  # NetCDF/Zarr: the dimension that becomes rows (default: the first)
    degrade: str | None = None  # make the condition from the target with this spec
    layout: str | None = None  # NHW, NCHW or NHWC; detected when unambiguous
    force_layout: bool = False  # accept an explicit layout with more channels than a spatial side
    mask_from_zeros: bool = False  # condition == 0 means missing (the seed's convention)
    normalization: str = "minmax"  # minmax or meanstd
    val_fraction: float = 0.1  # held-out fraction
    groups: str | None = None  # .npy of one integer id per row: rows sharing an id land in the same split
    seed: int = 0  # split and degradation seed
    chunk_rows: int = 4096  # rows per processing chunk (bounds memory)
    row_group_mb: float = 64.0  # target row-group size
    compression: str = "auto"  # Parquet codec: auto, lz4, zstd or none (see _codecs and bench/RESULTS.md)
    shard_mb: float = 256.0  # target file size
    overwrite: bool = False  # replace an existing output directory


def _sha256(files) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _validate_shapes(ref, cond, mask) -> None:
    N, (_, H, W) = len(ref), ref.chw
    for src in (cond, mask):
        if src is None or src is ref:
            continue
        if len(src) != N:
            raise InputError(f"{src.name} ({src.role}): has N={len(src)} samples but the {ref.role} has N={N}")
        if src.chw[1:] != (H, W):
            raise InputError(f"{src.name} ({src.role}): spatial shape {src.chw[1:]} does not match the "
                             f"{ref.role}'s {(H, W)}")
    if mask is not None and mask.chw[0] != 1:  # per-channel: the known values are the condition's, in target space
        C = ref.chw[0]
        if mask.chw[0] != C:
            raise InputError(f"{mask.name} (mask): has {mask.chw[0]} channels; expected 1 (one mask per pixel) "
                             f"or {C} (one per {ref.role} channel)")
        if cond is not None and cond.chw[0] != C:
            raise InputError(f"{mask.name} (mask): a per-channel mask needs a condition with the {ref.role}'s "
                             f"{C} channels, but {cond.name} has {cond.chw[0]}")


def _mask_for(chunk_cond, chunk_mask, opts, where: str) -> np.ndarray:
    if chunk_mask is not None:
        m = chunk_mask
        bad = ~((m == 0) | (m == 1))
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise InputError(f"{where} (mask): must be binary 0/1, found {m[bad].flat[0]!r} at row {i}")
        return m.astype(np.uint8)
    if chunk_cond is None:
        return None
    nan = np.isnan(chunk_cond).any(1, keepdims=True) if np.issubdtype(chunk_cond.dtype, np.floating) else None
    if nan is not None and nan.any():
        return (~nan).astype(np.uint8)
    if opts.mask_from_zeros:
        return (chunk_cond != 0).any(1, keepdims=True).astype(np.uint8)
    return np.zeros((chunk_cond.shape[0], 1, *chunk_cond.shape[2:]), np.uint8)


def _pass1(target, cond, mask, opts, progress) -> tuple[RunningStats | None, RunningStats | None, str]:
    ref = target if target is not None else cond
    N = len(ref)
    t_stats = RunningStats(target.chw[0]) if target is not None else None
    c_stats = RunningStats(cond.chw[0]) if cond is not None else None
    mask_kinds = set()
    for start in range(0, N, opts.chunk_rows):
        stop = min(N, start + opts.chunk_rows)
        if target is not None:
            x = target.read(start, stop)
            check_targets(x, f"{target.name} (target)", rows=range(start, stop))
            t_stats.update(x)
        if cond is not None:
            c = cond.read(start, stop)
            m = _mask_for(c, mask.read(start, stop) if mask else None, opts, mask.name if mask else "")
            check_observations(c, m, f"{cond.name} (condition)", rows=range(start, stop))
            c_stats.update(c, m.astype(bool) if m.any() else None)
            mask_kinds.add("explicit" if mask else ("nan_or_zeros" if m.any() else "none"))
        if progress:
            progress("scan", stop, N)
    return t_stats, c_stats, ",".join(sorted(mask_kinds)) or "targets-only"


class _SplitWriter:
    """Streams row groups into part-XXXXX.parquet files of about ``shard_rows`` rows."""

    def __init__(self, directory: Path, row_group_rows: int, shard_rows: int, compression: str):
        self.dir, self.rg, self.shard_rows, self.compression = directory, row_group_rows, shard_rows, compression
        directory.mkdir(parents=True)
        self.writer, self.rows_in_file, self.files, self.count = None, 0, 0, 0
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rg:
            self._flush(self.rg)

    def _flush(self, n: int) -> None:
        t = pa.concat_tables(self.pending)  # zero-copy: the writer takes chunked columns as they are
        head, tail = t.slice(0, n), t.slice(n)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.dir / f"part-{self.files:05d}.parquet", head.schema,
                                           compression=_codecs(head.schema, self.compression), use_dictionary=False,
                                           # min/max of whole tensor cells prune nothing: statistics for scalars only
                                           write_statistics=[f.name for f in head.schema if cell_dtype(f) is None])
            self.files += 1
        self.writer.write_table(head, row_group_size=n)
        self.rows_in_file += n
        self.count += n
        self.pending, self.pending_rows = ([tail] if tail.num_rows else []), tail.num_rows
        if self.rows_in_file >= self.shard_rows:
            self.writer.close()
            self.writer, self.rows_in_file = None, 0

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.writer is not None:
            self.writer.close()


def _load_groups(path: str, n: int) -> np.ndarray:
    p = Path(path)
    if p.suffix != ".npy" or not p.is_file():
        raise InputError(f"--groups {path}: expected an existing .npy file of one integer id per row")
    try:
        g = np.load(p, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise InputError(f"--groups {path}: unreadable .npy ({str(e).splitlines()[0][:200]})") from None
    if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
        raise InputError(f"--groups {path}: expected shape ({n},) of integers (one id per row), "
                         f"found shape {g.shape} dtype {g.dtype}")
    return np.asarray(g)


def split_rows(n: int, val_fraction: float, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Seeded boolean "is validation" per row: round(n * val_fraction) random rows, or, with ``groups``,
    whole groups in a seeded random order until at least that many rows are held out (so that
    snapshots of one trajectory, or tiles of one scene, never sit on both sides)."""
    rng = np.random.default_rng(seed)
    want = int(round(n * val_fraction))
    is_val = np.zeros(n, bool)
    if groups is None:
        is_val[rng.permutation(n)[:want]] = True
        return is_val
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(ids))
    take = order[: int(np.searchsorted(np.cumsum(counts[order]), want) + 1)] if want else order[:0]
    if len(take) == len(ids) and want:
        raise InputError(f"--groups: holding out {val_fraction:g} of the rows needs every one of the "
                         f"{len(ids)} groups; give more groups or a smaller --val-fraction")
    is_val[np.isin(inverse, take)] = True
    return is_val


def _table(cols: dict) -> pa.Table:
    fields, arrays = [pa.field("index", pa.int64(), nullable=False)], [cols.pop("index")]
    for name, a in cols.items():
        f, arr = tensor_field(name, a)
        fields.append(f)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _convert_to_uri(target_spec: str | None, out: str, opts: ConvertOptions, progress: Progress | None) -> dict:
    fsio.check_storage(out)
    if fsio.occupied(out) and not opts.overwrite:
        raise InputError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    with fsio.staged(out, last=META, replace=True) as local:  # META last: a folder without it is not a dataset
        return convert(target_spec, local, replace(opts, overwrite=False), progress)


def convert(target_spec: str | None, out: str | os.PathLike, opts: ConvertOptions = ConvertOptions(),
            progress: Progress | None = None) -> dict:
    """Convert arrays to a cfgdiff Parquet dataset at ``out``; returns the metadata written.

    ``target_spec`` may be None when only conditions (and masks) are given, for inference. ``out`` may be a URI
    (``s3://``, ``gs://``): the dataset is written to a local temporary folder and uploaded, its metadata last.
    """
    if fsio.is_uri(out):
        return _convert_to_uri(target_spec, str(out).rstrip("/"), opts, progress)
    out = Path(out)
    if target_spec is None and not opts.condition:
        raise InputError("need a target array, or --condition for condition-only (inference) data")
    if target_spec is None and opts.degrade:
        raise InputError("--degrade needs clean targets to degrade")
    if opts.degrade and opts.condition:
        raise InputError("--degrade and --condition are exclusive: degrade makes the condition from the target")
    if opts.mask and not opts.condition:
        raise InputError("--mask needs --condition (a mask says which condition pixels are known)")
    if not 0.0 <= opts.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.compression not in COMPRESSIONS:
        raise InputError(f"--compression {opts.compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    if opts.chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {opts.chunk_rows}")
    comps = parse_spec(opts.degrade) if opts.degrade else None
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise InputError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    alpha = opts.mask == "alpha"
    for spec in (target_spec, opts.condition, None if alpha else opts.mask):
        src = input_paths(spec) if spec else None
        if src is not None and src.resolve().is_relative_to(out.resolve()):
            raise InputError(f"--out {out}: holds the input {spec}; replacing it would delete your data, "
                             "choose another --out")
    if alpha and kind_of(opts.condition) != "images":
        raise InputError(f"--mask alpha: the condition {opts.condition} is not a folder of images with an alpha channel")
    src_opts = dict(layout=opts.layout, force_layout=opts.force_layout, sample_dim=opts.sample_dim)
    target = open_source(target_spec, "target", **src_opts) if target_spec is not None else None
    cond = open_source(opts.condition, "condition", **src_opts, alpha=alpha) if opts.condition else None
    # (N,H,W), (N,1,H,W) or per channel (N,C,H,W)
    mask = open_source(opts.condition if alpha else opts.mask, "mask", sample_dim=opts.sample_dim, alpha=alpha) \
        if opts.mask else None
    ref = target if target is not None else cond
    if opts.sample_dim and not any(s is not None and kind_of(s) == "xarray" for s in (target_spec, opts.condition)):
        raise InputError(f"--sample-dim {opts.sample_dim}: applies to NetCDF and Zarr variables (FILE.nc:VAR)")
    for other in (cond, mask):
        check_paired(ref, other)
    _validate_shapes(ref, cond, mask)
    N, (C, H, W) = len(ref), ref.chw
    is_val = split_rows(N, opts.val_fraction, opts.seed, _load_groups(opts.groups, N) if opts.groups else None)
    t_stats, c_stats, mask_source = _pass1(target, cond, mask, opts, progress)
    c_aff = c_stats.affine(opts.normalization) if c_stats else None
    t_aff = t_stats.affine(opts.normalization) if t_stats else c_aff
    norm = Normalization(opts.normalization, t_aff, c_aff or t_aff)
    Cc = cond.chw[0] if cond else C
    has_cond = cond is not None or comps is not None

    Cm = mask.chw[0] if mask else 1
    row_bytes = ref.dtype.itemsize * C * H * W + (4 * Cc * H * W + Cm * H * W if has_cond else 0) + 8
    rg_rows = max(1, int(opts.row_group_mb * 2**20 // row_bytes))
    shard_rows = max(rg_rows, int(opts.shard_mb * 2**20 // row_bytes))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        writers = {s: _SplitWriter(tmp / s, rg_rows, shard_rows, opts.compression) for s in ("train", "val")}
        for start in range(0, N, opts.chunk_rows):
            stop = min(N, start + opts.chunk_rows)
            cols = {"index": pa.array(np.arange(start, stop, dtype=np.int64))}
            if target is not None:
                x = target.read(start, stop)
                cols["target"] = x
            if cond is not None:
                c = cond.read(start, stop)
                m = _mask_for(c, mask.read(start, stop) if mask else None, opts, "")
                if Cc == C and m.any():
                    c = np.where(m.astype(bool), c, np.nan).astype(np.result_type(c.dtype, np.float32))
                cols["condition"], cols["mask"] = c, m
            elif comps is not None:
                c, m_t = degrade_raw(torch.from_numpy(x.astype(np.float32)), comps, t_aff, seed=opts.seed,
                                     index=range(start, stop))
                cols["condition"], cols["mask"] = c.numpy(), m_t.numpy().astype(np.uint8)
            table = _table(cols)
            sel = is_val[start:stop]
            for split, rows in (("train", ~sel), ("val", sel)):
                if rows.any():
                    writers[split].add(table.filter(pa.array(rows)))
            if progress:
                progress("write", stop, N)
        for w in writers.values():
            w.close()
        meta = {
            "format_version": FORMAT_VERSION,
            "shapes": {"target": [C, H, W] if target else None, "condition": [Cc, H, W] if has_cond else None,
                       "mask": [Cm, H, W] if has_cond else None},
            "dtypes": {"target": str(target.dtype) if target else None, "condition": str(cond.dtype) if cond else
                       ("float32" if comps else None)},
            "normalization": norm.to_dict(),
            "counts": {"total": N, "train": writers["train"].count, "val": writers["val"].count},
            "compression": opts.compression, "val_fraction": opts.val_fraction, "seed": opts.seed,
            "groups": opts.groups,
            "mask_source": "degrade" if comps else mask_source, "degrade": opts.degrade,
            "sources": {"target": target.sources() if target else None,
                        "condition": cond.sources() if cond else None, "mask": mask.sources() if mask else None},
            "source": (cond if cond is not None else target).describe(),
            "sha256": {role: _sha256(src.files) for role, src in
                       (("target", target), ("condition", cond), ("mask", mask)) if src is not None},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
