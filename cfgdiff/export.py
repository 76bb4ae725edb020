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

import torch

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


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Re-export the checkpoint at ``src`` (verified on load) as a model directory at ``dst``, atomically."""
    ck = load_checkpoint(src)
    meta = {k: v for k, v in ck.meta.items() if k != "validation"}
    meta["exported_from"] = str(Path(src).resolve())
    return write_atomically(dst, lambda tmp: write_model(tmp, ck.state_dict, ck.config, ck.normalization, meta,
                                                         ck.meta.get("validation")),
                            overwrite, "choose another --out or pass --overwrite")


def find_checkpoint(run: str | os.PathLike, which: str = "latest") -> Path:
    """The checkpoint ``which`` (``latest``: the newest step, ``best``, ``export`` or a ``step_...`` name) of the
    run folder ``run``; ``run`` itself when it is a checkpoint."""
    run = Path(run)
    is_checkpoint = lambda d: (d / CONFIG).is_file() and (d / WEIGHTS).is_file()  # a run folder has a config.json too
    if is_checkpoint(run):
        return run
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run or checkpoint folder")
    steps = sorted(p for p in run.glob("step_*") if is_checkpoint(p))
    if which == "latest":
        if not steps:
            raise CheckpointError(f"{run}: holds no step_* checkpoints (a run folder from `cfgdiff train`?)")
        return steps[-1]
    found = run / which
    if not is_checkpoint(found):
        names = ["latest", *(n for n in ("best", "export") if is_checkpoint(run / n)), *(p.name for p in steps)]
        raise CheckpointError(f"--checkpoint {which}: not in {run}; expected one of {', '.join(names)}")
    return found
