"""Array sources, the Parquet layout, and the one decoding function every reader uses.

Parquet layout written by ``cfgdiff convert`` (see convert.py)::

    DIR/cfgdiff.json                 metadata (shapes, dtypes, normalisation, split, checksums)
    DIR/train/part-00000.parquet     columns: index int64, target, [condition], [mask]
    DIR/val/part-00000.parquet

``target``/``condition``/``mask`` hold one (C, H, W) tensor per row as a fixed-length binary cell
(``tensor_field``; shape and dtype in the field metadata), in the source's units and dtype (NaN in
``condition`` = unknown); ``mask`` is uint8 (1, H, W), or (C, H, W) per target channel, 1 = known.
``decode_batch`` turns such columns into normalised float32 tensors for the model.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import fsio
from .errors import InputError
from .normalize import Normalization
from .validate import check_observations, check_targets

META = "cfgdiff.json"
LAYOUTS = ("NHW", "NCHW", "NHWC")


# --- array sources ------------------------------------------------------------------------------
def _open_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if head != b"\x93NUMPY":
        kind = "an empty file" if not head else ("text" if head.isascii() else f"bytes {head!r}")
        raise InputError(f"{path}: not a .npy file (no NumPy header; starts with {kind})")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: unreadable or truncated .npy file ({str(e).splitlines()[0]})") from None


def _open_npz(path: Path, key: str | None, role: str) -> np.ndarray:
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: unreadable .npz file ({str(e).splitlines()[0]})") from None
    keys = list(z.keys())
    aliases = {"target": ("target", "x", "x0"), "condition": ("condition", "cond", "c", "y"), "mask": ("mask",)}
    if key is None:
        found = [k for k in aliases.get(role, ()) if k in keys]
        key = keys[0] if len(keys) == 1 else (found[0] if found else None)
        if key is None:
            raise InputError(f"{path}: holds keys {keys}; say which one with {path}:KEY")
    if key not in keys:
        raise InputError(f"{path}: no key {key!r}; the file holds {keys}")
    try:
        return z[key]
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}:{key}: unreadable ({str(e).splitlines()[0]})") from None


class ArraySource:
    """A (possibly sharded) array in NCHW order, read in row ranges without loading it whole."""

    def __init__(self, spec: str, role: str, layout: str | None = None, force_layout: bool = False):
        self.spec, self.role = spec, role
        path_str, key = spec, None
        if ".npz:" in spec:
            path_str, key = spec.rsplit(":", 1)
        path = Path(path_str)
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise InputError(f"{path}: directory holds no .npy shards")
            self.parts = [_open_npy(f) for f in files]
            self.files = files
        elif not path.exists():
            raise InputError(f"{path}: no such file ({role})")
        elif path.suffix == ".npz":
            self.parts, self.files = [_open_npz(path, key, role)], [path]
        elif path.suffix == ".npy":
            self.parts, self.files = [_open_npy(path)], [path]
        else:
            raise InputError(f"{path}: expected a .npy or .npz file or a directory of .npy shards ({role})")
        self.name = str(self.files[0])  # how error messages name this source
        self._setup(layout, force_layout)

    @classmethod
    def from_parts(cls, spec: str, role: str, parts: list, files: list[Path], layout: str | None = None,
                   force_layout: bool = False) -> ArraySource:
        """A source over array-likes that slice lazily (h5py datasets): the same checks and reads as .npy."""
        self = cls.__new__(cls)
        self.spec, self.role, self.parts, self.files = spec, role, parts, files
        self.name = spec  # how error messages name this source
        self._setup(layout, force_layout)
        return self

    def describe(self) -> dict[str, Any] | None:
        """What a writer needs to put results back in the source's form (None: plain arrays)."""
        return None

    def _setup(self, layout: str | None, force_layout: bool) -> None:
        role = self.role
        first = self.parts[0]
        for f, p in zip(self.files, self.parts):
            if p.shape[1:] != first.shape[1:] or p.dtype != first.dtype:
                raise InputError(f"{f}: shard shape {p.shape}/{p.dtype} differs from {self.name}: "
                                 f"{first.shape}/{first.dtype}")
            if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)
                    or p.dtype == np.bool_):
                raise InputError(f"{f}: dtype {p.dtype} is not a float, integer or bool array")
        self.dtype = first.dtype
        self.layout = detect_layout(first.shape, layout, f"{self.name} ({role})", force_layout)
        self.offsets = np.cumsum([0] + [p.shape[0] for p in self.parts])
        if self.offsets[-1] == 0:
            raise InputError(f"{self.name}: empty array ({role}); expected at least one sample")
        C, H, W = self.chw
        if C < 1:
            raise InputError(f"{self.name} ({role}): has 0 channels (shape {first.shape}, layout {self.layout})")
        if min(H, W) < MIN_SIDE:
            raise InputError(f"{self.name} ({role}): images are {H}x{W}; cfgdiff needs at least "
                             f"{MIN_SIDE}x{MIN_SIDE} pixels")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def chw(self) -> tuple[int, int, int]:
        s = self.parts[0].shape
        if self.layout == "NHW":
            return (1, s[1], s[2])
        return (s[1], s[2], s[3]) if self.layout == "NCHW" else (s[3], s[1], s[2])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a contiguous (n, C, H, W) array in the source dtype."""
        pieces = []
        for k, p in enumerate(self.parts):
            lo, hi = max(start, self.offsets[k]), min(stop, self.offsets[k + 1])
            if lo < hi:
                pieces.append(np.array(p[lo - self.offsets[k]:hi - self.offsets[k]]))  # a copy
                mm = getattr(p, "_mmap", None)
                if mm is not None and hasattr(mm, "madvise"):
                    # drop the mapped pages we just copied, so resident memory stays bounded by the chunk
                    mm.madvise(mmap.MADV_DONTNEED)
        a = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        if self.layout == "NHW":
            a = a[:, None]
        elif self.layout == "NHWC":
            a = a.transpose(0, 3, 1, 2)  # (n, H, W, C) -> (n, C, H, W)
        return np.ascontiguousarray(a)

    def sources(self) -> list[dict[str, Any]]:
        return [{"path": str(f), "shape": list(p.shape), "dtype": str(p.dtype)} for f, p in zip(self.files, self.parts)]


MIN_SIDE = 4  # smallest image side: a U-Net needs room to downsample at least twice


def detect_layout(shape: tuple[int, ...], layout: str | None, what: str, force: bool = False) -> str:
    """Resolve (N,H,W) / (N,C,H,W) / (N,H,W,C); ambiguous 4-D shapes need an explicit layout.

    An explicit layout whose channel axis is larger than a spatial axis (NHWC on an (N, 1, 32, 32)
    array makes 32 channels of 1x32) is refused unless ``force``: it is almost always a swapped layout.
    """
    if layout is not None:
        if layout not in LAYOUTS:
            raise InputError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        if len(shape) != len(layout):
            raise InputError(f"{what}: --layout {layout} needs a {len(layout)}-D array, found shape {tuple(shape)}")
        if len(shape) == 4 and not force:
            c, hw = (shape[1], shape[2:]) if layout == "NCHW" else (shape[3], shape[1:3])
            if c > min(hw):
                raise InputError(f"{what}: --layout {layout} on shape {tuple(shape)} makes {c} channels of "
                                 f"{hw[0]}x{hw[1]}; a swapped layout? pass --force-layout if it is meant")
        return layout
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        # a channel axis is small (<= 16) and smaller than both spatial axes
        c_first = shape[1] <= 16 and shape[1] < min(shape[2], shape[3])
        c_last = shape[3] <= 16 and shape[3] < min(shape[1], shape[2])
        if c_first and not c_last:
            return "NCHW"
        if c_last and not c_first:
            return "NHWC"
        raise InputError(f"{what}: cannot tell NCHW from NHWC for shape {tuple(shape)}; pass --layout")
    raise InputError(f"{what}: expected a 3-D (N,H,W) or 4-D (N,C,H,W)/(N,H,W,C) array, found shape {tuple(shape)}")


# --- metadata ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetMeta:
    root: str  # a local folder or a URI (s3://, gs://, file://)
    doc: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path) -> DatasetMeta:
        root = str(root).rstrip("/") if fsio.is_uri(root) else str(root)
        if not fsio.is_dir(root):
            raise InputError(f"{root}: data directory does not exist")
        f = fsio.join(root, META)
        if not fsio.is_file(f):
            raise InputError(f"{root}: not a cfgdiff dataset (no {META}); create one with `cfgdiff convert`")
        try:
            return cls(root, json.loads(fsio.read_text(f)))
        except json.JSONDecodeError as e:
            raise InputError(f"{f}: invalid JSON ({e})") from None

    @property
    def normalization(self) -> Normalization:
        return Normalization.from_dict(self.doc["normalization"])

    @property
    def target_shape(self) -> tuple[int, int, int]:
        return tuple(self.doc["shapes"]["target"])

    @property
    def cond_channels(self) -> int:
        shp = self.doc["shapes"].get("condition")
        return shp[0] if shp else self.target_shape[0]

    @property
    def mask_channels(self) -> int:
        """1 (one mask per pixel: degraded on the fly, from NaN, or a 1-channel mask) or C (per channel)."""
        shp = self.doc["shapes"].get("mask")
        return shp[0] if shp else 1

    @property
    def has_condition(self) -> bool:
        return self.doc["shapes"].get("condition") is not None

    def split_dir(self, split: str) -> str:
        return fsio.join(self.root, split)

    def count(self, split: str) -> int:
        return int(self.doc["counts"][split])


# --- encoding and decoding ------------------------------------------------------------------------
SHAPE_KEY, DTYPE_KEY = b"cfgdiff.shape", b"cfgdiff.dtype"


def tensor_field(name: str, a: np.ndarray) -> tuple[pa.Field, pa.Array]:
    """(n, C, H, W) numpy -> one fixed-length binary cell per row, zero-copy.

    Each cell holds one C-order (C, H, W) tensor; its shape and dtype are in the field metadata.
    Parquet stores Arrow's list-based fixed_shape_tensor with a repetition level per element, which
    reads ~5-10x slower than these flat cells (bench/RESULTS.md), and training reads every row every epoch.
    """
    a = np.ascontiguousarray(a)
    cell = int(np.prod(a.shape[1:])) * a.itemsize
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(cell), len(a), [None, pa.py_buffer(a)])
    meta = {SHAPE_KEY: json.dumps(list(a.shape[1:])).encode(), DTYPE_KEY: a.dtype.str.encode()}
    return pa.field(name, pa.binary(cell), nullable=False, metadata=meta), arr


def cell_dtype(field: pa.Field) -> np.dtype | None:
    """The numpy dtype of a ``tensor_field`` column's cells; None for any other column."""
    md = field.metadata or {}
    return np.dtype(md[DTYPE_KEY].decode()) if pa.types.is_fixed_size_binary(field.type) and DTYPE_KEY in md else None


def _column_to_numpy(field: pa.Field, col: pa.Array) -> np.ndarray:
    dtype = cell_dtype(field)
    if dtype is not None:
        shape = json.loads(field.metadata[SHAPE_KEY])
        width = col.type.byte_width
        flat = np.frombuffer(col.buffers()[1], np.uint8, count=len(col) * width, offset=col.offset * width)
        return flat.view(dtype).reshape(len(col), *shape)  # zero-copy, read-only
    if isinstance(col.type, pa.FixedShapeTensorType):  # datasets written before the flat cells
        return col.to_numpy_ndarray()
    return col.to_numpy()


def table_to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """Arrow table (as written by ``cfgdiff convert``) -> dict of numpy arrays (N, ...), zero-copy where possible."""
    return {f.name: _column_to_numpy(f, _one_chunk(table.column(f.name))) for f in table.schema}


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    """The column as one array; ``combine_chunks`` copies even a single chunk, so skip it then."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def as_numpy_batch(batch: pa.Table | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data hands batches as Arrow tables (``batch_format="pyarrow"``); local readers as numpy dicts."""
    return table_to_numpy(batch) if isinstance(batch, pa.Table) else batch


def check_batch(batch: dict[str, np.ndarray], where: str = "dataset") -> None:
    """Finiteness of a raw batch as it is decoded (convert checked it once; this catches shards damaged
    since): targets finite, conditions NaN only where unknown and never inf. One vectorised pass."""
    rows = np.asarray(batch["index"])
    if "target" in batch:
        check_targets(batch["target"], where, rows=rows)
    if "condition" in batch:
        check_observations(batch["condition"], batch.get("mask"), where, rows=rows)


def decode_batch(batch: pa.Table | dict[str, np.ndarray], norm: Normalization, device: str | torch.device = "cpu",
                 where: str = "dataset") -> dict[str, torch.Tensor]:
    """Raw columns -> model tensors: x0 (B, C, H, W) and, when present, cond (B, C_c, H, W) and mask.

    Normalises with the dataset's statistics; unknown (NaN) condition values become 0. Each column
    is copied once (Arrow buffers are read-only) and then normalised in place. Non-finite values are
    refused first (``check_batch``), naming the row's index and ``where``.
    """
    batch = as_numpy_batch(batch)
    out = {"index": torch.tensor(np.asarray(batch["index"], dtype=np.int64))}
    check_batch(batch, where)
    if "target" in batch:
        out["x0"] = norm.target.normalize_numpy(batch["target"]).to(device)
    if "condition" in batch:
        c = norm.condition.normalize_numpy(batch["condition"])
        out["cond"] = torch.nan_to_num_(c, nan=0.0).to(device)
    if "mask" in batch:
        out["mask"] = torch.tensor(np.asarray(batch["mask"]), dtype=torch.float32).to(device)
    return out


def parquet_files(split_dir: str | Path) -> list[str]:
    """A split's Parquet shards (local paths or URIs), in file order."""
    return fsio.list_files(split_dir, ".parquet")


def open_parquet(f: str | Path) -> pq.ParquetFile:
    """One shard, local (memory-mapped) or on object storage; a broken one is named in one line."""
    try:
        return pq.ParquetFile(fsio.open_input(f))
    except (OSError, pa.ArrowException, ValueError) as e:
        raise InputError(f"{f}: unreadable Parquet shard ({fsio.first_line(e)})") from None


def _row_groups(files: list[str], columns: list[str] | None) -> Iterator[dict[str, np.ndarray]]:
    for f in files:
        pf = open_parquet(f)
        try:
            for i in range(pf.num_row_groups):
                yield table_to_numpy(pf.read_row_group(i, columns=columns))
        except (OSError, pa.ArrowException, ValueError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{f}: unreadable Parquet shard ({str(e).splitlines()[0][:200]})") from None


def iter_parquet_batches(split_dir: str | Path, batch_size: int, columns: list[str] | None = None,
                         files: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Ray-free reader (local or object storage): raw numpy batches of exactly ``batch_size`` rows (the last may be
    shorter) from every shard of a split, in file order.

    Whole row groups are decoded one ahead on a background thread: pyarrow decompresses without the
    GIL, so reading the next group overlaps the consumer's work on this one.
    """
    files = files if files is not None else parquet_files(split_dir)
    if not files:
        raise InputError(f"{split_dir}: no Parquet shards")
    groups = _row_groups(files, columns)
    with ThreadPoolExecutor(1, thread_name_prefix="cfgdiff-read") as pool:
        def ahead() -> Iterator[dict[str, np.ndarray]]:
            pending = pool.submit(next, groups, None)
            while (group := pending.result()) is not None:
                pending = pool.submit(next, groups, None)
                yield group
        yield from rebatch(ahead(), batch_size)


def rebatch(groups: Iterable[dict[str, np.ndarray]], batch_size: int, drop_last: bool = False
            ) -> Iterator[dict[str, np.ndarray]]:
    """Large groups of rows (row groups, Ray Data blocks) -> batches of exactly ``batch_size`` rows.

    Batches are slices (views) of a group; only a batch spanning two groups is concatenated. The
    last, shorter batch is yielded unless ``drop_last``. Both readers use this: slicing whole blocks
    costs microseconds per batch, where Ray Data's own batching costs ~0.1 ms (bench/RESULTS.md).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    carry: dict[str, np.ndarray] | None = None
    for group in groups:
        n, i = _rows(group), 0
        if carry is not None:  # complete the batch left over from the previous group
            i = min(batch_size - _rows(carry), n)
            carry = {k: np.concatenate([carry[k], v[:i]]) for k, v in group.items()}
            if _rows(carry) < batch_size:
                continue
            yield carry
            carry = None
        while i + batch_size <= n:
            yield {k: v[i:i + batch_size] for k, v in group.items()}
            i += batch_size
        if i < n:
            carry = {k: v[i:] for k, v in group.items()}
    if carry is not None and not drop_last:
        yield carry


def _rows(group: dict[str, np.ndarray]) -> int:
    return len(next(iter(group.values())))


def shuffle_rows(group: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The group's rows in a random order (one gather per column, the same permutation for all)."""
    perm = rng.permutation(_rows(group))
    return {k: v[perm] for k, v in group.items()}


def read_split(split_dir: str | Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """Read a whole split (or its first ``limit`` rows) into memory as numpy arrays."""
    parts, n = [], 0
    for b in iter_parquet_batches(split_dir, batch_size=1024):
        parts.append(b)
        n += len(b["index"])
        if limit is not None and n >= limit:
            break
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {k: v[:limit] for k, v in out.items()} if limit is not None else out
