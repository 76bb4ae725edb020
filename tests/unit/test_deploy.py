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
    import ast  # the builder named by import_path exists and takes these args (read, not imported: no Ray here)

    tree = ast.parse((DEPLOY.parent / "serve.py").read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert "app" in funcs and set(app["args"]) - {"checkpoint"} <= {a.arg for a in funcs["build"].args.kwonlyargs}
