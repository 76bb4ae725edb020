"""The decaying 2-D turbulence demo: seeded, split by trajectory, and non-Gaussian with a steep spectrum."""

import numpy as np

from cfgdiff.convert import ConvertOptions, convert, split_rows
from cfgdiff.data import DatasetMeta, read_split
from cfgdiff.demo import write_demo
from cfgdiff.turbulence import decaying_turbulence, energy_spectrum, kurtosis


def test_seeded_and_independent_of_batching():
    a, ga = decaying_turbulence(3, 2, size=16, seed=4, spin_up=1.0)
    b, gb = decaying_turbulence(3, 2, size=16, seed=4, spin_up=1.0, batch=2)
    c, _ = decaying_turbulence(3, 2, size=16, seed=5, spin_up=1.0)
    assert np.array_equal(a, b) and np.array_equal(ga, gb) and list(ga) == [0, 0, 1, 1, 2, 2]
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and a.shape == (6, 1, 16, 16) and np.isfinite(a).all()


def test_spectrum_slope_and_kurtosis():
    """Above the energy peak the shell spectrum falls like k^-4 to k^-6: steeper than Kraichnan's k^-3
    enstrophy cascade because coherent vortices form (McWilliams 1984, whose hyperviscous runs show k^-4
    to k^-5), and not steeper than ~k^-7, which would mean hyperviscosity eats the range. The vortices make
    the vorticity heavy-tailed: its kurtosis grows well above the Gaussian 3 as the flow decays."""
    x, _ = decaying_turbulence(8, 2, size=32, seed=0, spin_up=10.0, every=4.0)
    k, E = energy_spectrum(x)
    sel = (k >= 5) & (k <= 12)
    slope = np.polyfit(np.log(k[sel]), np.log(E[sel]), 1)[0]
    assert -6.5 < slope < -3.5, slope
    early, _ = decaying_turbulence(8, 1, size=32, seed=0, spin_up=0.0)
    assert abs(kurtosis(early) - 3) < 0.6  # the initial field is Gaussian
    assert kurtosis(x) > 6, kurtosis(x)


def test_demo_rows_and_groups_never_straddle_the_split(tmp_path):
    meta = write_demo(tmp_path / "raw", kind="turbulence", n=40, size=16, seed=0)
    assert meta["trajectories"] == 2 and np.load(meta["groups"]).tolist() == [0] * 32 + [1] * 8
    convert(meta["target"], tmp_path / "data", ConvertOptions(val_fraction=0.3, groups=meta["groups"]))
    m = DatasetMeta.load(tmp_path / "data")
    groups = np.load(meta["groups"])
    seen = [set(groups[read_split(m.split_dir(s))["index"]]) for s in ("train", "val")]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    g = np.repeat(np.arange(50), 7)
    val = split_rows(len(g), 0.2, 3, g)
    assert 0.2 <= val.mean() < 0.2 + 7 / len(g) + 1e-9  # whole groups, just enough of them
    for gid in range(50):
        assert len(set(val[g == gid])) == 1
