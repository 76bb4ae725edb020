"""Non-Gaussian demo data: decaying 2-D turbulence (vorticity snapshots), in numpy.

The 2-D incompressible Navier-Stokes equations in vorticity form on the periodic box [0, 2 pi)^2,

    d omega / dt + u . grad(omega) = - D omega (D: hyperviscous damping),    u = (d psi / dy, -d psi / dx),  lap(psi) = -omega,

are integrated pseudo-spectrally (2/3-rule dealiasing of the advection term; Canuto et al., *Spectral
Methods*, sec. 3.2) with the classical RK4 scheme. Small scales are damped by hyperviscosity, rate c (k / k_max)^8 (as
in McWilliams 1984), integrated exactly by an integrating factor, so the time step is limited by
advection (CFL) only. The initial vorticity is a
Gaussian random field with energy spectrum E(k) ~ k^4 exp(-2 (k / k_p)^2) (the peaked spectrum of
McWilliams 1984, J. Fluid Mech. 146). As the flow decays, like-signed vorticity merges into coherent
vortices: the field becomes strongly non-Gaussian (vorticity kurtosis well above 3), which is what
makes it a test that a linear estimator (kriging/LMMSE) cannot win by construction.

Trajectories are simulated at ``2 * size`` and Fourier-truncated to ``size`` (the resolved flow,
not a sub-sampled one). Snapshots are taken every ``every`` time units after a spin-up; rows of one
trajectory are consecutive and share a group id, so a split by group never shares a flow between
training and validation.
"""

from __future__ import annotations

import numpy as np


def _wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ky = np.fft.fftfreq(n, 1.0 / n)[:, None]  # integer wavenumbers on the 2 pi box
    kx = np.fft.rfftfreq(n, 1.0 / n)[None, :]
    k2 = kx**2 + ky**2
    return kx, ky, k2


def initial_vorticity(rng: np.random.Generator, batch: int, n: int, k_peak: float) -> np.ndarray:
    """(batch, n, n/2+1) spectral vorticity: random phases, E(k) ~ k^4 exp(-2 (k/k_p)^2), u_rms = 1."""
    kx, ky, k2 = _wavenumbers(n)
    k = np.sqrt(k2)
    energy = k**4 * np.exp(-2.0 * (k / k_peak) ** 2)
    # |omega_hat|^2 ~ k^2 E(k) / k  (energy per shell spread over ~k modes)
    amp = np.sqrt(np.where(k > 0, k * energy, 0.0))
    w = np.fft.rfft2(rng.standard_normal((batch, n, n))) * amp  # real field => Hermitian spectrum
    w[..., 0, 0] = 0.0
    psi = np.where(k2 > 0, w / np.where(k2 > 0, k2, 1.0), 0.0)
    u = np.fft.irfft2(1j * ky * psi, s=(n, n))
    v = np.fft.irfft2(-1j * kx * psi, s=(n, n))
    urms = np.sqrt((u**2 + v**2).mean(axis=(-2, -1)) / 2.0)
    return w / urms[:, None, None]


class Decaying2D:
    """The pseudo-spectral integrator for a batch of independent trajectories on an n x n grid."""

    def __init__(self, n: int, cutoff_rate: float, order: int = 4):
        self.n = n
        self.kx, self.ky, self.k2 = _wavenumbers(n)
        self.inv_k2 = np.where(self.k2 > 0, 1.0 / np.where(self.k2 > 0, self.k2, 1.0), 0.0)
        kmax = n // 3  # 2/3 rule: modes above n/3 are zeroed in the nonlinear term
        self.dealias = (np.abs(self.kx) <= kmax) & (np.abs(self.ky) <= kmax)
        self.damp = cutoff_rate * (self.k2 / kmax**2) ** order  # hyperviscosity: rate at |k| = kmax

    def advection(self, w_hat: np.ndarray) -> np.ndarray:
        """-(u . grad omega), dealiased, in spectral space (one batched inverse FFT of u, v, grad omega)."""
        psi = w_hat * self.inv_k2
        u, v, wx, wy = np.fft.irfft2(np.stack([1j * self.ky * psi, -1j * self.kx * psi, 1j * self.kx * w_hat,
                                               1j * self.ky * w_hat]), s=(self.n, self.n))
        return -np.fft.rfft2(u * wx + v * wy) * self.dealias

    def step(self, w_hat: np.ndarray, dt: float) -> np.ndarray:
        """One RK4 step with the integrating factor E(t) = exp(-D t) (exact hyperviscous decay)."""
        e_half = np.exp(-self.damp * dt / 2)
        e_full = e_half * e_half
        k1 = self.advection(w_hat)
        k2 = self.advection(e_half * (w_hat + dt / 2 * k1))
        k3 = self.advection(e_half * w_hat + dt / 2 * k2)
        k4 = self.advection(e_full * w_hat + dt * e_half * k3)
        return e_full * w_hat + dt / 6 * (e_full * k1 + 2 * e_half * (k2 + k3) + k4)


def fourier_truncate(w_hat: np.ndarray, n: int, size: int) -> np.ndarray:
    """Real-space (batch, size, size) field holding the modes |k| < size/2 of an n-grid spectrum."""
    h = size // 2
    rows = np.concatenate([w_hat[:, :h], w_hat[:, n - h:]], axis=1)[:, :, : h + 1].copy()
    rows[:, h, :] = 0.0  # drop the Nyquist row/column: they have no real counterpart at the new size
    rows[:, :, h] = 0.0
    return np.fft.irfft2(rows, s=(size, size)) * (size / n) ** 2


def decaying_turbulence(trajectories: int, snapshots: int, size: int = 32, seed: int = 0, k_peak: float = 8.0,
                        cutoff_rate: float = 4.0, spin_up: float = 6.0, every: float = 0.5, batch: int = 32,
                        progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Vorticity snapshots (trajectories * snapshots, 1, size, size) float32 and their trajectory ids.

    Simulated on the 3/2-padded grid n = 3 size / 2, whose 2/3-rule cutoff n/3 is the output's
    Nyquist wavenumber, so every output mode is a resolved, dynamically evolved one. The time step is
    fixed (CFL 1 for |u| + |v| <= 5; the initial u_rms is 1 and a decaying flow only slows), and each
    trajectory starts from its own seeded field (seed, trajectory index): the output depends on
    neither ``batch`` nor the number of trajectories asked for. ``progress(done, total)`` is called
    after each batch of trajectories.
    """
    if size % 4 or size < 8:
        raise ValueError(f"size must be a multiple of 4 and >= 8, got {size}")
    n = 3 * size // 2
    sim = Decaying2D(n, cutoff_rate)
    sub = max(1, int(np.ceil(every / (2 * np.pi / n / 5.0))))  # steps per snapshot interval
    dt = every / sub
    out = np.empty((trajectories, snapshots, 1, size, size), np.float32)
    for b0 in range(0, trajectories, batch):
        ids = range(b0, min(trajectories, b0 + batch))
        w_hat = np.concatenate([initial_vorticity(np.random.default_rng([seed, i]), 1, n, k_peak) for i in ids])
        for _ in range(int(round(spin_up / dt))):
            w_hat = sim.step(w_hat, dt)
        for s in range(snapshots):
            if s:
                for _ in range(sub):
                    w_hat = sim.step(w_hat, dt)
            out[b0:b0 + len(ids), s, 0] = fourier_truncate(w_hat, n, size)
        if progress:
            progress(b0 + len(ids), trajectories)
    groups = np.repeat(np.arange(trajectories, dtype=np.int64), snapshots)
    return out.reshape(trajectories * snapshots, 1, size, size), groups


def energy_spectrum(omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shell-averaged energy spectrum E(k) = sum over |k| in [k-1/2, k+1/2) of |omega_hat|^2 / (2 k^2),
    averaged over the batch; returns (k, E) for k = 1 .. size/2 - 1."""
    size = omega.shape[-1]
    w_hat = np.fft.fft2(omega.reshape(-1, size, size)) / size**2
    ky, kx = np.meshgrid(np.fft.fftfreq(size, 1.0 / size), np.fft.fftfreq(size, 1.0 / size), indexing="ij")
    k = np.sqrt(kx**2 + ky**2)
    dens = (np.abs(w_hat) ** 2).mean(0) / np.where(k > 0, 2 * k**2, 1.0)
    ks = np.arange(1, size // 2)
    shell = np.rint(k).astype(int)
    return ks, np.array([dens[shell == kk].sum() for kk in ks])


def kurtosis(omega: np.ndarray) -> float:
    """Pooled excess-free kurtosis E[(w - mean)^4] / var^2 of the vorticity values (3 for a Gaussian)."""
    w = omega.astype(np.float64).ravel()
    w = w - w.mean()
    return float((w**4).mean() / (w**2).mean() ** 2)
