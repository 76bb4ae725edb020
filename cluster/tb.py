"""TensorBoard logging from rank 0 (Train V2 has no TensorBoard logger of its own; RAY_NOTES §6)."""

from __future__ import annotations

import numpy as np
import torch

from cfgdiff.viz import image_grid


class TBWriter:
    """A thin SummaryWriter wrapper that is a no-op on ranks other than 0."""

    def __init__(self, log_dir: str | None, purge_step: int | None = None):
        self.w = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.w = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.w is None:
            return
        for k, v in values.items():
            if v is not None and np.isfinite(v):
                self.w.add_scalar(f"{prefix}{k}", float(v), step)

    def grid(self, tag: str, cond: torch.Tensor, mask: torch.Tensor, sample: torch.Tensor, target: torch.Tensor,
             step: int, n: int = 8) -> None:
        """condition | mask | sample | target | |error| for the first n rows."""
        if self.w is None:
            return
        rows = []
        for i in range(min(n, sample.shape[0])):
            err = (sample[i] - target[i]).abs()
            rows.append([cond[i].cpu().numpy(), mask[i].cpu().numpy(), sample[i].cpu().numpy(),
                         target[i].cpu().numpy(), err.cpu().numpy()])
        img = image_grid(rows, scale=3, ranges=[(-1, 1), (0, 1), (-1, 1), (-1, 1), (0, 1)],
                         masks=[[mask[i].cpu().numpy(), None, None, None, None] for i in range(len(rows))])
        self.w.add_image(tag, img, step, dataformats="HWC")

    def hparams(self, hparams: dict, metrics: dict) -> None:
        if self.w is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self.w.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None},
                           run_name=".")

    def close(self) -> None:
        if self.w is not None:
            self.w.flush()
            self.w.close()
