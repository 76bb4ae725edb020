"""The deployment manifests parse and run `cfgdiff train` on GPU nodes."""

import pathlib

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "cluster" / "deploy"


def test_cluster_launcher_yaml():
    doc = yaml.safe_load((DEPLOY / "ray-cluster-aws.yaml").read_text())
    assert doc["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert any("ray start --head" in c for c in doc["head_start_ray_commands"])
    assert "cfgdiff train" in (DEPLOY / "ray-cluster-aws.yaml").read_text()


def test_kuberay_rayjob():
    doc = yaml.safe_load((DEPLOY / "rayjob-kuberay.yaml").read_text())
    assert doc["kind"] == "RayJob" and "cfgdiff train" in doc["spec"]["entrypoint"]
    assert "--gpu" in doc["spec"]["entrypoint"]
    worker = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_kuberay_rayservice_runs_the_serve_config():
    doc = yaml.safe_load((DEPLOY / "rayservice-kuberay.yaml").read_text())
    assert doc["kind"] == "RayService"
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    app = serve_cfg["applications"][0]
    assert app["import_path"] == "cluster.serve:app" and app["args"]["checkpoint"].startswith("/shared/")
    assert app["deployments"][0]["name"] == "CfgdiffService"
    for pod in [doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"],
                *(g["template"]["spec"] for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"])]:
        volumes, mounts = _pod_volumes(pod)
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and mounts["dshm"] == "/dev/shm"
    import ast  # the builder named by import_path exists and takes these args (read, not imported: no Ray here)

    tree = ast.parse((DEPLOY.parent / "serve.py").read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert "app" in funcs and set(app["args"]) - {"checkpoint"} <= {a.arg for a in funcs["build"].args.kwonlyargs}


# --- #21.4: deploy files that run (no docker or kubectl here: parsed, and their fields checked) ---
ROOT = DEPLOY.parents[1]


def _ray_pin() -> str:
    import re

    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray = next(d for d in deps if d.startswith("ray["))
    return re.search(r">=(\d+\.\d+)", ray).group(1) + ".0"


def _parse_cli(command: str):
    """Parse a cfgdiff command line with the real click commands (options, types, choices), without running it."""
    import shlex
    import warnings

    from cli.main import cli

    argv = shlex.split(command)
    assert argv[0] == "cfgdiff" or argv[:3] == ["python", "-m", "cli.main"], command
    argv = argv[1:] if argv[0] == "cfgdiff" else argv[3:]
    ctx = cli.make_context("cfgdiff", list(argv))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rest = [*getattr(ctx, "protected_args", []), *ctx.args]
    name, sub, rest = cli.resolve_command(ctx, rest)
    return sub.make_context(name, rest, parent=ctx)


def test_dockerfile_builds_from_the_pinned_ray_image_and_this_tree():
    text = (ROOT / "Dockerfile").read_text()
    pin = _ray_pin()
    assert f"ARG BASE=rayproject/ray:{pin}-py311\n" in text and f"rayproject/ray:{pin}-py311-gpu" in text
    assert "FROM ${BASE}" in text
    copies = [line.split()[-2] for line in text.splitlines() if line.startswith("COPY")]
    assert {"cfgdiff", "cluster", "cli"} <= set(copies)
    for line in text.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[2:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the tree"
    assert 'pip install --no-cache-dir ".[formats]"' in text and "cfgdiff --version" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignored)


def test_cluster_launcher_syncs_and_installs_this_tree_and_mounts_shared_storage():
    doc = yaml.safe_load((DEPLOY / "ray-cluster-aws.yaml").read_text())
    (remote, local), = doc["file_mounts"].items()
    assert local == "." and remote == "/home/ubuntu/cfgdiff"
    setup = "\n".join(doc["setup_commands"])
    assert f'pip install -q -e "{remote}[formats]"' in setup, "installs the synced tree, not a placeholder"
    assert f"ray[default,train,tune,serve]=={_ray_pin()}" in setup
    assert "mount -t nfs4" in setup and "/mnt/shared" in setup
    assert ".venv" in doc["rsync_exclude"]


def _pod_volumes(spec) -> tuple[dict, dict]:
    container = spec["containers"][0]
    return {v["name"]: v for v in spec["volumes"]}, {m["name"]: m["mountPath"] for m in container["volumeMounts"]}


def test_rayjobs_for_train_and_tune_have_shm_gpus_tolerations_and_shared_storage():
    pin = _ray_pin()
    for name, command in (("rayjob-kuberay.yaml", "train"), ("rayjob-tune-kuberay.yaml", "tune")):
        doc = yaml.safe_load((DEPLOY / name).read_text())
        spec = doc["spec"]
        assert doc["kind"] == "RayJob" and spec["rayClusterSpec"]["rayVersion"] == pin
        ctx = _parse_cli(spec["entrypoint"])  # the entrypoint is a valid cfgdiff command
        assert ctx.command.name == command and ctx.params["gpu"] and ctx.params["ray_address"] == "auto"
        assert ctx.params["data"].startswith("/shared/")
        pods = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]] + \
            [g["template"]["spec"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
        for pod in pods:
            volumes, mounts = _pod_volumes(pod)
            assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and mounts["dshm"] == "/dev/shm", name
            assert volumes["shared"]["persistentVolumeClaim"]["claimName"] and mounts["shared"] == "/shared"
            assert pod["containers"][0]["image"].endswith("-gpu"), "the CUDA image of the Dockerfile"
        worker = pods[1]
        assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
        assert worker["nodeSelector"]
        gpus = sum(g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
        wanted = ctx.params["workers"] * ctx.params.get("max_concurrent", 1)
        assert gpus >= wanted, f"{name}: {wanted} GPU workers asked, {gpus} GPU pods"


def test_runtime_env_installs_every_dependency_but_ray():
    import re

    import tomllib

    env = yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())
    name = lambda req: re.split(r"[<>=\[ ]", req, maxsplit=1)[0].lower()
    deps = {name(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {name(p) for p in env["pip"]} == deps - {"ray"}
    assert ".venv/" in env["excludes"] and "runs/" in env["excludes"]
    text = (DEPLOY / "runtime_env.yaml").read_text()
    command = text.split("-- \\\n#")[1].splitlines()[0].strip()
    assert _parse_cli(command).command.name == "train"
