"""Noise streams: sample i draws all its noise from its own generator keyed by (seed, index).

Keyed through ``numpy.random.SeedSequence``, so results do not depend on batch size or worker count, and
the streams of seed s and seed s+1 share no row (``seed + index`` made seed 1's row i the same noise as
seed 0's row i+1). A ``generator`` instead draws batch-wise noise from it (faster for huge Monte-Carlo
batches).

Antithetic pairs: with ``antithetic`` the samples of indices 2j and 2j+1 share the stream of 2j, the second with
its sign flipped, at every draw (the start and every stochastic step). Each sample keeps its exact marginal law;
the pair's mean cancels the odd part of the sampler's map from noise to sample, all of it when that map is
affine, as for Gaussian data (Hammersley & Morton 1956; the control-variate view in Owen, "Monte Carlo theory",
ch. 8.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def stream_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for sample ``index`` of run ``seed``: a hash of the pair, not a sum."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(index) % 2**63]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class NoiseSource:
    """Standard normal draws of shape (B, *shape), per sample or batch-wise."""

    def __init__(self, shape: Sequence[int], device: torch.device, *, seed: int | Sequence[int] = 0,
                 sample_index: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 antithetic: bool = False):
        """``seed``: one base seed, or one per sample (rows of several requests batched together)."""
        self.shape, self.device = tuple(shape), device
        self.generator = generator
        self.sign = None
        if generator is not None and antithetic:
            raise ValueError("antithetic pairs need per-sample streams, not a batch-wise generator")
        if generator is None:
            idx = range(self.shape[0]) if sample_index is None else [int(i) for i in sample_index]
            if antithetic:
                idx = list(idx)
                self.sign = torch.tensor([-1.0 if i % 2 else 1.0 for i in idx], device=device).view(-1, *[1] * (len(shape) - 1))
                idx = [i - i % 2 for i in idx]
            seeds = [int(seed)] * len(idx) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
            if len(idx) != self.shape[0] or len(seeds) != self.shape[0]:
                raise ValueError(f"sample_index and per-sample seeds must have {self.shape[0]} entries, got "
                                 f"{len(idx)} and {len(seeds)}")
            self.generators = [torch.Generator(device=device).manual_seed(stream_seed(s, i)) for s, i in zip(seeds, idx)]

    def __call__(self) -> torch.Tensor:
        if self.generator is not None:
            return torch.randn(self.shape, generator=self.generator, device=self.device)
        z = torch.stack([torch.randn(self.shape[1:], generator=g, device=self.device) for g in self.generators])
        return z if self.sign is None else z * self.sign
