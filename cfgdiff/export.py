"""Exports that can be shared: a model directory with ``config.json``, ``model.safetensors`` and a ``README.md``
model card, without the training state (which stays in the run's checkpoints), readable by teammates
(``checkpoint.share``: 0644 files and 0755 folders under the usual umask).

``write_model`` writes one into an existing directory; ``export_checkpoint`` re-exports any checkpoint (a step,
``best``, an older export) atomically; ``find_checkpoint`` names one in a run folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from . import fsio
from .checkpoint import CONFIG, WEIGHTS, load_checkpoint, write_atomically, write_checkpoint_files
from .config import ExperimentConfig
from .errors import CheckpointError
from .normalize import Normalization

CARD = "README.md"


def validation_numbers(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The numbers of a validation report, for ``meta["validation"]`` and the card (not the step counters)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return ", ".join(_fmt(x) for x in v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(config: ExperimentConfig, normalization: Normalization, meta: dict[str, Any],
               metrics: dict[str, Any] | None = None) -> str:
    """A short README.md: what the model takes and returns, how it was trained, how well it did."""
    mc, tc = config.model, config.train
    H, W = mc.image_size
    lines = ["# cfgdiff model", "",
             "A conditional diffusion model with classifier-free guidance that reconstructs fields from partial "
             "observations. Load it with `cfgdiff.load(DIR)` or `cfgdiff infer DIR ...`; `cfgdiff info DIR` prints "
             "its architecture.", "",
             "## Data", "",
             f"- fields: {H}x{W}, {mc.in_channels} target channel(s), {mc.cond_channels} condition channel(s), "
             f"mask {'per channel' if mc.mask_channels > 1 else 'per pixel'} (1 = known)",
             f"- normalisation (target): offset {_fmt(normalization.target.offset)}, scale "
             f"{_fmt(normalization.target.scale)}; (condition): offset {_fmt(normalization.condition.offset)}, "
             f"scale {_fmt(normalization.condition.scale)}"]
    if meta.get("dataset"):
        lines.append(f"- trained on: `{meta['dataset']}`")
    lines += ["", "## Training", "",
              f"- steps: {meta.get('step', '?')} (batch {tc.batch_size}, lr {_fmt(tc.lr)}, condition dropout "
              f"p = {_fmt(tc.p_uncond)}, {tc.precision})",
              f"- architecture: {mc.preset or 'custom'} preset, dim {mc.dim}, levels {list(mc.dim_mults)}, "
              f"predicts {mc.prediction}",
              f"- sampler defaults: {config.sampler.method}, {config.sampler.steps} steps, w = {_fmt(config.sampler.w)}"]
    if meta.get("command"):
        lines.append(f"- made by: `{meta['command']}`")
    if metrics:
        lines += ["", "## Validation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    return "\n".join(lines) + "\n"


def write_model(directory: str | os.PathLike, weights: dict[str, torch.Tensor], config: ExperimentConfig,
                normalization: Normalization, meta: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None) -> Path:
    """Write config, weights and the model card into an existing (empty) directory (``write_atomically`` puts it
    in place with shareable permissions)."""
    metrics = validation_numbers(metrics)
    meta = {**(meta or {}), **({"validation": metrics} if metrics else {})}
    d = write_checkpoint_files(directory, weights, config, normalization, meta, training_state=None)
    (d / CARD).write_text(model_card(config, normalization, meta, metrics))
    return d


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Re-export the checkpoint at ``src`` (verified on load) as a model directory at ``dst``, atomically. Either may
    be a URI: a remote ``dst`` is written locally and uploaded, its ``config.json`` last."""
    ck = load_checkpoint(src)
    meta = {k: v for k, v in ck.meta.items() if k != "validation"}
    meta["exported_from"] = str(src) if fsio.is_uri(src) else str(Path(src).resolve())
    write = lambda tmp: write_model(tmp, ck.state_dict, ck.config, ck.normalization, meta, ck.meta.get("validation"))
    hint = "choose another --out or pass --overwrite"
    if not fsio.is_uri(dst):
        return str(write_atomically(dst, write, overwrite, hint))
    fsio.check_storage(str(dst))
    if fsio.occupied(dst) and not overwrite:
        raise CheckpointError(f"{dst}: exists; {hint}")
    with fsio.staged(dst, last=CONFIG, replace=True) as local:  # config.json last: then it is complete
        write(local)
    return str(dst)


def is_checkpoint(where: str | os.PathLike) -> bool:
    """A checkpoint folder (config and weights; a run folder has a config.json too), local or at a URI."""
    return fsio.is_file(fsio.join(where, CONFIG)) and fsio.is_file(fsio.join(where, WEIGHTS))


def step_checkpoints(run: str | os.PathLike) -> list[str]:
    """The run's ``step_*`` checkpoints, oldest first, local or at a URI."""
    fs, path = fsio.location(run)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                   if i.type == pafs.FileType.Directory and i.base_name.startswith("step_"))
    return [d for d in (fsio.join(run, n) for n in names) if is_checkpoint(d)]


def find_checkpoint(run: str | os.PathLike, which: str = "latest") -> str:
    """The checkpoint ``which`` (``latest``: the newest step, ``best``, ``export`` or a ``step_...`` name) of the
    run folder ``run`` (local or a URI); ``run`` itself when it is a checkpoint."""
    run = str(run).rstrip("/") if fsio.is_uri(run) else str(run)
    if is_checkpoint(run):
        return run
    if not fsio.is_dir(run):
        raise CheckpointError(f"{run}: no such run or checkpoint folder")
    steps = step_checkpoints(run)
    if which == "latest":
        if not steps:
            raise CheckpointError(f"{run}: holds no step_* checkpoints (a run folder from `cfgdiff train`?)")
        return steps[-1]
    found = fsio.join(run, which)
    if not is_checkpoint(found):
        names = ["latest", *(n for n in ("best", "export") if is_checkpoint(fsio.join(run, n))),
                 *(fsio.name(p) for p in steps)]
        raise CheckpointError(f"--checkpoint {which}: not in {run}; expected one of {', '.join(names)}")
    return found
