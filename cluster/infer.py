"""Parallel batch inpainting on a pool of Ray actors (``cfgdiff infer``).

The driver reads the input with cfgdiff's local Parquet reader (over a million rows/s, thousands of
times what the samplers consume) and deals fixed batches to actors, one in flight per actor. Each
actor loads the model once; the checkpoint travels through the object store, so no shared
filesystem is needed for it. Why actors and not Ray Data ``map_batches``: measured on 2 cores
(bench/RESULTS.md), Ray Data's executor, read tasks and helper actors took CPU from the two
samplers (1 -> 2 actors 1.62-1.68x steady, 5.5-8.4 s to the first batch); this pool starts in 1.2-1.8 s
and scales 1.66-1.90x (median 1.80). Not ``ray.util.ActorPool``: its ``map_unordered`` queues every batch
in the driver up front, where ``_deal`` reads the next batch only when an actor is free. Fault
tolerance is Ray core's: a dead actor is restarted (``max_restarts``) and its unfinished call retried
(``max_task_retries``).

Exactly once: every row has a global ``index``; the driver writes each output row into its slot
and checks that every slot was filled once. Determinism: sample k of row i draws from
the stream keyed by (seed, i K + k) in the core sampler, so outputs do not depend on actor count or batch size.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from cfgdiff import fsio
from cfgdiff.api import check_mask_channels, finalize, prepare_inputs, reconstruct_normalized
from cfgdiff.checkpoint import checkpoint_files, load_checkpoint_files
from cfgdiff.config import SamplerConfig
from cfgdiff.convert import ConvertOptions, convert
from cfgdiff.data import META, DatasetMeta, as_numpy_batch, iter_parquet_batches, open_parquet, parquet_files
from cfgdiff.errors import InputError
from cfgdiff.formats import kind_of
from cfgdiff.metrics import coverage, known_error, mae_missing, psnr, ssim, std_error_correlation
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.tiling import plan_tiling
from cfgdiff.validate import check_observations

from .outputs import check_existing, check_output, outputs, rows_in, write_outputs

logger = logging.getLogger("cfgdiff.infer")

@dataclass
class InferJob:
    checkpoint: str  # checkpoint directory
    input: str  # cfgdiff dataset dir, or arrays or files (targets with `degrade`, or conditions): see cfgdiff.formats
    out: str  # OUT.npy, OUT.parquet, OUT.nc, OUT.zarr or a folder of images; side files OUT.*.{npy,png,json}
    mask: str | None = None  # mask (1 = known) for array or file conditions; "alpha" for images' alpha channel
    sample_dim: str | None = None  # NetCDF/Zarr input: the dimension that becomes rows
    condition: str | None = None  # condition array when `input` holds targets
    degrade: str | None = None  # make conditions from clean targets (benchmarking)
    split: str | None = None  # split of a dataset directory ("train", "val" or "all"; None = "val"); arrays are whole
    actors: int = 1  # inference actors
    gpus_per_actor: float = 0.0  # GPUs per actor
    cpus_per_actor: float = 1.0  # logical CPUs per actor
    threads_per_actor: int = 1  # torch threads per actor
    batch_size: int = 16  # rows per actor batch
    model_batch: int = 8  # rows per network call (fixed: bit-identical output for any batch size); 0 = whole batch
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    num_samples: int = 1  # K samples per row (K > 1 adds mean/std maps)
    seed: int = 0  # base seed
    overwrite: bool = False  # replace existing outputs
    grid_rows: int = 8  # rows in the PNG grid
    limit: int | None = None  # reconstruct only the first N rows (by row index)
    fail_once_marker: str | None = None  # test hook: first actor call dies once
    tile: int | None = None  # denoise overlapping tile x tile windows (fields larger than the training size)
    overlap: int | None = None  # window overlap in pixels (default tile // 4)


def _prepare_input(job: InferJob, tmp: Path) -> tuple[DatasetMeta, str]:
    """A cfgdiff dataset for any input, and the split to reconstruct: a dataset directory (local or on object
    storage, read in place) is used as is (``job.split``, default val); arrays are converted (validated) into
    ``tmp`` and reconstructed whole (files on object storage are downloaded into ``tmp`` first)."""
    if fsio.is_file(fsio.join(job.input, META)):
        if job.degrade or job.mask or job.condition:
            raise InputError("--degrade/--mask/--condition apply to array inputs, not to a converted dataset")
        return DatasetMeta.load(job.input), job.split or "val"
    if job.split is not None:
        raise InputError(f"--split {job.split}: applies to cfgdiff dataset directories; array input {job.input} is "
                         "reconstructed whole")
    fetched = {spec: _fetch(spec, tmp / "src", role) for spec, role in
               ((job.input, "--input"), (job.condition, "--condition"), (job.mask, "--mask")) if spec}
    src = Path(fetched[job.input])
    if src.suffix in (".npy", ".npz") or src.is_dir() or kind_of(str(src)) != "npy":
        cond, mask = fetched.get(job.condition), fetched.get(job.mask, job.mask)
        opts = ConvertOptions(condition=cond, mask=mask, degrade=job.degrade, val_fraction=0.0,
                              seed=job.seed, sample_dim=job.sample_dim)
        if job.condition is None and job.degrade is None:  # the input holds conditions
            opts = ConvertOptions(condition=str(src), mask=mask, val_fraction=0.0, sample_dim=job.sample_dim)
            convert(None, tmp / "in", opts)
        else:
            convert(str(src), tmp / "in", opts)
        meta = DatasetMeta.load(tmp / "in")
        if meta.doc["mask_source"] == "none":
            raise InputError(f"--input {job.input}: no mask; pass --mask M (1 = known) or mark missing pixels as NaN")
        return meta, "all"
    raise InputError(f"--input {job.input}: expected a cfgdiff dataset directory, a .npy/.npz file, a .npy or image "
                     "folder, FILE.nc:VAR, STORE.zarr:VAR or FILE.h5:/DATASET")


def _fetch(spec: str, into: Path, option: str) -> str:
    """An input on object storage, downloaded into ``into`` (a ``FILE:VAR`` spec keeps its variable); a local
    input as it is."""
    if not fsio.is_uri(spec) or spec == "alpha":
        return spec
    uri, var = spec, ""
    if not fsio.exists(uri) and ":" in spec.rsplit("/", 1)[-1]:
        uri, var = spec.rsplit(":", 1)
        var = ":" + var
    if not fsio.exists(uri):
        raise InputError(f"{option} {spec}: not found")
    into.mkdir(parents=True, exist_ok=True)
    local = into / f"{len(list(into.iterdir()))}-{fsio.name(uri)}"
    return str(fsio.download(uri, local)) + var


def _split_dirs(meta: DatasetMeta, split: str) -> list[str]:
    if split not in ("train", "val", "all"):
        raise InputError(f"--split must be train, val or all, got {split!r}")
    names = ["train", "val"] if split == "all" else [split]
    dirs = [meta.split_dir(s) for s in names if parquet_files(meta.split_dir(s))]
    if not dirs:
        raise InputError(f"--input {meta.root}: split {split!r} holds no rows (choose --split train, val or all)")
    return dirs


def validate(job: InferJob, meta: DatasetMeta, ckpt) -> None:
    mc = ckpt.config.model
    check_output(job, meta, mc.in_channels)
    if not meta.has_condition:
        raise InputError(f"--input {job.input}: holds no conditions or masks; pass --degrade SPEC to make them")
    shp = meta.doc["shapes"]["condition"]
    if shp[0] != mc.cond_channels:
        raise InputError(f"--input {job.input}: conditions have {shp[0]} channels (C x H x W = "
                         f"{shp[0]}x{shp[1]}x{shp[2]}) but the checkpoint expects {mc.cond_channels}")
    check_mask_channels(meta.mask_channels, mc.mask_channels, mc.in_channels,
                        f"--mask {job.mask}" if job.mask else f"--input {job.input}: the mask")
    try:
        job.tile, job.overlap, warnings = plan_tiling(tuple(shp[1:]), mc.image_size, job.tile, job.overlap)
    except InputError as e:
        raise InputError(f"--input {job.input}: {e}") from None
    for msg in warnings:
        logger.warning(msg)
    t = meta.doc["shapes"].get("target")
    if t and t[0] != mc.in_channels:
        raise InputError(f"--input {job.input}: targets have {t[0]} channels, the checkpoint {mc.in_channels}")
    if job.actors < 1 or job.batch_size < 1 or job.num_samples < 1:
        raise InputError("--workers, --batch-size and --num-samples must be >= 1")
    if job.limit is not None and job.limit < 1:
        raise InputError(f"--limit must be >= 1, got {job.limit}")
    if job.model_batch < 0:
        raise InputError(f"--model-batch must be >= 0 (0 = whole batch), got {job.model_batch}")


def check_rows(job: InferJob, dirs: list[str], ckpt) -> None:
    """One streaming pass over the observations before any actor starts: no inf, no NaN where known,
    no known value absurdly outside the checkpoint's data range; errors name the user's row and input."""
    nc = ckpt.normalization.condition
    for d in dirs:
        names = open_parquet(parquet_files(d)[0]).schema_arrow.names
        for b in iter_parquet_batches(d, 4096, columns=[c for c in ("index", "condition", "mask") if c in names]):
            check_observations(np.asarray(b["condition"]), b.get("mask"), f"--input {job.input}",
                               rows=b["index"], offset=nc.offset, scale=nc.scale)


class Inpainter:
    """The actor's work: loads the model on its first batch, reconstructs raw numpy (or Arrow) batches.

    The checkpoint comes with every call as an object-store reference (cheap: a reference, fetched once),
    not through the constructor, so that a restarted actor reloads it from the retried call itself.
    """

    def __init__(self, sampler: dict, num_samples: int, seed: int, degrade: str | None, threads: int,
                 fail_once_marker: str | None, model_batch: int = 8, tile: int | None = None, overlap: int = 0):
        torch.set_num_threads(threads)
        self.ckpt = self.model = None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.sampler = SamplerConfig(**{**sampler, "resample": tuple(sampler["resample"]) if sampler["resample"] else None})
        self.K, self.seed, self.degrade, self.fail = num_samples, seed, degrade, fail_once_marker
        self.model_batch, self.tile, self.overlap = model_batch, tile, overlap

    def _load(self, ckpt_files: dict[str, bytes]) -> None:
        self.ckpt = load_checkpoint_files(ckpt_files)
        self.model = self.ckpt.build_model(self.device)
        self.schedule = NoiseSchedule.from_config(self.ckpt.config.schedule).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray] | pa.Table, ckpt_files_ref: list) -> dict[str, np.ndarray]:
        if self.model is None:
            self._load(ray.get(ckpt_files_ref[0]))  # a one-element list: Ray passes the reference, not the value
        t_start = time.time()
        batch = as_numpy_batch(batch)  # raw numpy columns (an Arrow table is viewed zero-copy)
        if self.fail and not os.path.exists(self.fail):
            Path(self.fail).write_text("died once")
            os._exit(1)  # test hook: the actor dies mid-batch, once
        mc, norm = self.ckpt.config.model, self.ckpt.normalization
        cond_raw = np.asarray(batch["condition"], dtype=np.float32)
        mask = np.asarray(batch["mask"], dtype=np.float32) if "mask" in batch else None
        cond_n, mask_t, known = prepare_inputs(cond_raw, mask, norm, mc.in_channels, mc.mask_channels)
        dev = lambda t: t.to(self.device) if t is not None else None
        x, calls = reconstruct_normalized(self.model, self.schedule, dev(cond_n), dev(mask_t), dev(known),
                                          batch["index"].tolist(), self.sampler, in_channels=mc.in_channels,
                                          prediction=mc.prediction, num_samples=self.K, seed=self.seed,
                                          degrade_spec=self.degrade, model_batch=self.model_batch,
                                          tile=self.tile, overlap=self.overlap,
                                          clip_range=norm.target.clip_bounds())
        samples, mean, std = finalize(x.cpu(), norm, cond_raw, mask_t, self.sampler.antithetic)
        out = {"index": batch["index"], "reconstruction": mean if self.K > 1 else samples[:, 0],
               "model_calls": np.full(len(mean), calls, np.int64)}
        if self.K > 1:
            out["std"], out["samples"] = std, samples
        if "target" in batch:
            out.update(_row_metrics(torch.from_numpy(out["reconstruction"]), torch.from_numpy(std), batch, norm,
                                    mask_t, self.K))
        out["batch_t0"], out["batch_t1"] = np.full(len(mean), t_start), np.full(len(mean), time.time())
        return out


def _row_metrics(rec, std, batch, norm, mask, K) -> dict[str, np.ndarray]:
    """Per-row metrics: PSNR/SSIM in user units with the stored data range (hi - lo per channel), errors in
    normalised target units."""
    tgt_u = torch.tensor(np.asarray(batch["target"]), dtype=torch.float32)
    tgt, rec_n, rng = norm.target.normalize(tgt_u), norm.target.normalize(rec), norm.target.data_range_tensor()
    m = {"psnr": psnr(rec, tgt_u, rng), "ssim": ssim(rec, tgt_u, rng), "mae_missing": mae_missing(rec_n, tgt, mask),
         "known_error": known_error(rec, torch.tensor(np.asarray(batch["target"]), dtype=torch.float32), mask)}
    if K > 1:
        std_n = std / torch.tensor(norm.target.scale).view(1, -1, 1, 1).float()
        m["coverage_2std"] = coverage(rec_n, std_n, tgt, mask)
        m["std_error_corr"] = std_error_correlation(std_n, rec_n, tgt, mask)
    return {f"metric_{k}": v.numpy() for k, v in m.items()}


def _check_resources(job: InferJob) -> None:
    """Refuse a pool the cluster cannot hold: actors beyond it would wait forever for CPUs or GPUs."""
    have = ray.cluster_resources()
    for name, per in (("CPU", job.cpus_per_actor), ("GPU", job.gpus_per_actor)):
        need = job.actors * per
        if need > have.get(name, 0) + 1e-9:
            raise InputError(f"--actors {job.actors} x {per:g} {name} per actor needs {need:g} {name}s; the Ray "
                             f"cluster has {have.get(name, 0):g}")


def _deal(actors: list, batches, *extra) -> Iterator[dict[str, np.ndarray]]:
    """Results of ``actor.__call__(batch, *extra)`` for every batch, in completion order, one call in flight
    per actor (the next batch is read only when an actor is free, so memory stays bounded)."""
    free, busy = list(actors), {}
    batches = iter(batches)
    while True:
        while free and (batch := next(batches, None)) is not None:
            actor = free.pop()
            busy[actor.__call__.remote(batch, *extra)] = actor
        if not busy:
            return
        [ready], _ = ray.wait(list(busy), num_returns=1)
        free.append(busy.pop(ready))
        yield ray.get(ready)


def run_inference(job: InferJob, progress: Callable[[int, int], None] | None = None) -> dict:
    """Reconstruct every row of the input; returns a summary with metrics when targets are known.

    The checkpoint, the input and ``--out`` may be on object storage: remote array files are downloaded to a
    temporary folder first, the checkpoint is read once (loaded here and sent to the actors), a remote dataset is
    read in place, and the outputs are written locally and uploaded at the end (nothing is uploaded when the run
    fails)."""
    for where, option in ((job.checkpoint, "CHECKPOINT"), (job.input, "--input"), (job.out, "--out")):
        fsio.check_storage(where, option)
    remote_out = fsio.is_uri(job.out)
    out = Path(job.out)
    tmp = Path(tempfile.mkdtemp(prefix=".cfgdiff-infer-", dir=None if remote_out or not out.parent.exists() else out.parent))
    try:
        local, files = job, checkpoint_files(job.checkpoint)  # read once: loaded here, and sent to the actors
        if remote_out:
            check_existing(job)  # nothing there yet, or --overwrite
            (tmp / "out").mkdir()
            local = replace(local, out=str(tmp / "out" / fsio.name(job.out)))
        ckpt = load_checkpoint_files(files, origin=job.checkpoint)
        ckpt.build_model("cpu")  # weights vs config checked here, not inside an actor
        meta, split = _prepare_input(local, tmp)
        validate(local, meta, ckpt)
        summary = _run(local, ckpt, files, meta, split, tmp, progress)
        if remote_out:
            pairs = [(s, d) for s, d in zip(outputs(local), outputs(job), strict=True) if os.path.exists(s)]
            for src, dst in pairs:
                fsio.upload(src, dst)
            summary["outputs"] = [d for _, d in pairs]
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(job: InferJob, ckpt, files: dict[str, bytes], meta: DatasetMeta, split: str, tmp: Path, progress) -> dict:
    dirs = _split_dirs(meta, split)
    check_rows(job, dirs, ckpt)
    index = np.sort(np.concatenate([open_parquet(f).read(columns=["index"]).column("index").to_numpy()
                                    for d in dirs for f in parquet_files(d)]))
    if job.limit is not None:
        index = index[:job.limit]
    N = len(index)
    C, (H, W), K = ckpt.config.model.in_channels, meta.doc["shapes"]["condition"][1:], job.num_samples
    _check_resources(job)
    ref = ray.put(files)  # sent with every call: a restarted actor reloads from it
    actor_cls = ray.remote(num_cpus=job.cpus_per_actor, num_gpus=job.gpus_per_actor or None, max_restarts=3,
                           max_task_retries=3)(Inpainter)
    args = dict(sampler=dict(job.sampler.__dict__), num_samples=K, seed=job.seed,
                degrade=meta.doc.get("degrade"), threads=job.threads_per_actor, fail_once_marker=job.fail_once_marker,
                model_batch=job.model_batch, tile=job.tile, overlap=job.overlap)
    actors = [actor_cls.remote(**args) for _ in range(job.actors)]
    rec = np.lib.format.open_memmap(tmp / "rec.npy", mode="w+", dtype=np.float32, shape=(N, C, H, W))
    std = np.lib.format.open_memmap(tmp / "std.npy", mode="w+", dtype=np.float32, shape=(N, C, H, W)) if K > 1 else None
    smp = np.lib.format.open_memmap(tmp / "smp.npy", mode="w+", dtype=np.float32, shape=(N, K, C, H, W)) if K > 1 else None
    seen = np.zeros(N, np.int64)
    metric_sums: dict[str, float] = {}
    metric_counts: dict[str, int] = {}
    calls, t0, done, work_start, work_end = 0, time.time(), 0, np.inf, -np.inf
    try:
        batches = (b for d in dirs for b in iter_parquet_batches(d, job.batch_size))
        if job.limit is not None:
            batches = (k for b in batches if len((k := rows_in(b, index))["index"]))
        for b in _deal(actors, batches, [ref]):
            work_start, work_end = min(work_start, b["batch_t0"].min()), max(work_end, b["batch_t1"].max())
            pos = np.searchsorted(index, b["index"])
            rec[pos] = b["reconstruction"]
            if K > 1:
                std[pos], smp[pos] = b["std"], b["samples"]
            np.add.at(seen, pos, 1)
            calls = int(b["model_calls"][0])
            for k, v in b.items():
                if k.startswith("metric_"):
                    ok = np.isfinite(v)
                    metric_sums[k[7:]] = metric_sums.get(k[7:], 0.0) + float(v[ok].sum())
                    metric_counts[k[7:]] = metric_counts.get(k[7:], 0) + int(ok.sum())
            done += len(pos)
            if progress:
                progress(done, N)
    finally:
        for a in actors:
            ray.kill(a)
    seconds = time.time() - t0
    if not np.all(seen == 1):
        raise RuntimeError(f"exactly-once violated: {int((seen == 0).sum())} rows missing, "
                           f"{int((seen > 1).sum())} duplicated")
    metrics = {k: metric_sums[k] / max(metric_counts[k], 1) for k in metric_sums}
    degraded = (meta.doc["degrade"], meta.doc.get("seed", 0)) if meta.doc.get("mask_source") == "degrade" else None
    write_outputs(job, meta, index, rec, std, smp, tmp, dirs, metrics, ckpt.normalization.target.data_range(), degraded)
    # steady state: from the first batch an actor started to the last it finished (actor start-up excluded)
    steady = N / max(float(work_end - work_start), 1e-9) if N else None
    return {"rows": N, "seconds": seconds, "images_per_s": N / max(seconds, 1e-9), "steady_images_per_s": steady,
            "startup_s": float(work_start - t0) if N else None, "model_calls_per_image": calls,
            "metrics": metrics, "outputs": [p for p in outputs(job) if os.path.exists(p)]}
