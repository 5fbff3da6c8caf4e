"""deploy/: every file parses, says in its header how it is used, and names only entrypoints and configs that exist."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from gr_train.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
# Files of this issue; deploy/hostfile and deploy/launch_multinode.sh belong to the distributed launcher.
FILES = ["ray-cluster.yaml", "rayjob.yaml", "runtime_env.yaml", "Dockerfile"]


def text(name):
    return (DEPLOY / name).read_text()


@pytest.mark.parametrize("name", FILES)
def test_file_parses_and_has_a_usage_header(name):
    body = text(name)
    header = [line for line in body.splitlines()[:8] if line.startswith("#")]
    assert len(header) >= 2, f"{name}: the first lines must say how the file is used"
    if name.endswith((".yaml", ".yml")):
        assert isinstance(yaml.safe_load(body), dict)
    elif name.endswith(".json"):
        json.loads(body)


def entrypoint_modules(body):
    return set(re.findall(r"python -m ([\w.]+)", body))


def config_paths(body):
    return set(re.findall(r"--config\s+(\S+\.ya?ml)", body))


@pytest.mark.parametrize("name", FILES)
def test_named_entrypoints_and_configs_exist(name):
    body = text(name)
    for module in entrypoint_modules(body):
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name} names {module}, which does not exist"
    for config in config_paths(body):
        load_config(REPO / config)  # exists and is a valid config


def test_rayjob_entrypoint_runs_a_job_with_valid_overrides():
    job = yaml.safe_load(text("rayjob.yaml"))
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_jobs.preprocess"]
    config, overrides = argv[argv.index("--config") + 1], argv[argv.index("--config") + 2 :]
    cfg = load_config(REPO / config, overrides)  # every override names a real key with a valid value
    assert cfg.retrieval.shard_resources == {"index_shard": 1}
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert any("index_shard" in w["rayStartParams"].get("resources", "") for w in workers)
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == __import__("ray").__version__


def test_cluster_yaml_node_types_are_consistent():
    cluster = yaml.safe_load(text("ray-cluster.yaml"))
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]
    assert all("InstanceType" in t["node_config"] for t in types.values())


def test_runtime_env_excludes_keep_the_upload_small():
    env = yaml.safe_load(text("runtime_env.yaml"))
    assert env["working_dir"] == "."
    for heavy in (".venv", ".git", "runs", "*.parquet"):
        assert heavy in env["excludes"]


def test_dockerfile_copies_only_paths_that_exist():
    for line in text("Dockerfile").splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "torch==2.13.0" in text("Dockerfile")


# ---------------------------------------------------------------------------------------------------------------
# Security: Ray token authentication on every deployed Ray, dashboards on loopback or behind the token
# ---------------------------------------------------------------------------------------------------------------


def test_no_deploy_file_turns_ray_authentication_off():
    for path in [*DEPLOY.iterdir(), REPO / ".ci" / "run"]:
        body = path.read_text()
        assert not re.search(r"RAY_AUTH_MODE\W+disabled", body), f"{path.name} turns Ray token authentication off"


def test_cluster_launcher_starts_every_node_with_token_auth_and_the_dashboard_on_loopback():
    cluster = yaml.safe_load(text("ray-cluster.yaml"))
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]
              if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        assert cmd.startswith("RAY_AUTH_MODE=token ray start"), cmd
    head = starts[0]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in text("ray-cluster.yaml")
    # the token reaches every node (the head and the workers read ~/.ray/auth_token under RAY_AUTH_MODE=token)
    assert "~/.ray/auth_token" in cluster["file_mounts"]


def test_rayjob_turns_on_kuberay_token_auth():
    job = yaml.safe_load(text("rayjob.yaml"))
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    # authOptions needs Ray >= 2.52 (and KubeRay >= 1.5.1)
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert all(e["name"] != "RAY_AUTH_MODE" for e in container.get("env", [])), container["name"]


def test_image_and_ci_default_to_token_auth():
    assert re.search(r"^ENV .*RAY_AUTH_MODE=token", text("Dockerfile"), re.M)
    assert re.search(r"RAY_AUTH_MODE=token", (REPO / ".ci" / "run").read_text())
