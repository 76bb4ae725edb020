"""The design card's import rule: cli -> cluster -> cfgdiff, never backwards."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _loaded_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_core_imports_no_ray_click_or_tensorboard():
    mods = _loaded_after("import cfgdiff, cfgdiff.api, cfgdiff.convert, cfgdiff.engine, cfgdiff.demo, "
                         "cfgdiff.sampling, cfgdiff.viz")
    assert not mods & {"ray", "click", "tensorboard", "cluster", "cli"}, mods & {"ray", "click", "tensorboard"}


RAY_MODULES = "ray, ray.data, ray.train, ray.train.torch, ray.tune, ray.tune.integration.ray_train"


def test_cluster_imports_no_click():
    """cluster/ never imports click or cli. Ray itself loads click (ray.train.torch imports
    ray.autoscaler._private.cli_logger), so compare against what Ray alone loads."""
    ray_only = _loaded_after(f"import {RAY_MODULES}")
    mods = _loaded_after(f"import {RAY_MODULES}; import cluster, cluster.runtime, cluster.train, cluster.infer, "
                         "cluster.tune, cluster.pipeline")
    assert "cli" not in mods
    assert ("click" in mods) == ("click" in ray_only), "click comes from Ray, not from cluster/"
    plain = _loaded_after("import cluster, cluster.runtime")
    assert "cli" not in plain


def test_source_files_respect_layers():
    for pkg, banned in (("cfgdiff", ("ray", "click", "tensorboard", "cluster", "cli")), ("cluster", ("click", "cli"))):
        for f in (ROOT / pkg).rglob("*.py"):
            for line in f.read_text().splitlines():
                s = line.strip()
                for b in banned:
                    assert not (s.startswith(f"import {b}") or s.startswith(f"from {b}")), f"{f}: {s}"
