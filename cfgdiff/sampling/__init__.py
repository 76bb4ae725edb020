"""Samplers as small composable parts: DDPM, DDIM, DPM-Solver++(2M) and its SDE form, with classifier-free
guidance, inpainting projection, RePaint resampling and DDNM consistency for linear operators.

- ``denoiser``: ``CFG(network, w)`` (the spec's guidance, one batched 2B forward) and ``Denoiser`` (the
  network's own parametrisation, eps or v, turned into x0; x0 hooks applied);
- ``hooks``: ``ClipX0``, ``Consistency`` (DDNM) on x0 predictions, ``ProjectKnown`` on new samples;
- ``solvers``: ``solver(denoiser, x, points, noise, hooks) -> x0`` for each method, sharing one loop;
- ``noise``: per-sample streams keyed by (seed, index);
- ``compose``: ``sample()``, the public entry.
"""

from .compose import SampleResult, sample
from .denoiser import CFG, Denoiser, declared_prediction, guided_output, resolve_prediction
from .hooks import ClipX0, Consistency, ProjectKnown
from .noise import NoiseSource, stream_seed
from .solvers import SOLVERS, Points, dpm_solver_2m_sde_step, dpm_solver_2m_step, move_coefficients, plan_moves, timestep_sequence

__all__ = ["CFG", "SOLVERS", "ClipX0", "Consistency", "Denoiser", "NoiseSource", "Points", "ProjectKnown",
           "SampleResult", "declared_prediction", "dpm_solver_2m_sde_step", "dpm_solver_2m_step", "guided_output",
           "move_coefficients", "plan_moves", "resolve_prediction", "sample", "stream_seed", "timestep_sequence"]
