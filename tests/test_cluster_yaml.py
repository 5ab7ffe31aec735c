"""cluster.yaml passes Ray's own config preparation and schema, and the lone script it submits runs
against the project installed the way its setup_commands install it."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_validates_with_rays_own_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)  # raises on any schema error
    assert prepared["provider"]["type"] == "aws"
    assert prepared["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # a CPU head
    assert head["resources"] == {"CPU": 0}  # that runs no work
    workers = {n: t for n, t in types.items() if n != prepared["head_node_type"]}
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"].startswith("g5")]
    cpu = [t for t in workers.values() if t["node_config"]["InstanceType"].startswith("c6i")]
    assert len(gpu) == 1 and len(cpu) == 1
    for t in gpu + cpu:
        assert t["min_workers"] == 0 and t["max_workers"] >= 1 and prepared["max_workers"] >= t["max_workers"]
        assert t["node_config"]["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ugc-crop-s3")  # S3 by profile
    # the head names its own profile (Ray's default one lacks iam:PassRole on the workers' role)
    assert head["node_config"]["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ugc-crop-head")


def test_the_permissions_each_node_needs_are_written_down():
    """The head's autoscaler must pass the workers' role to EC2: cluster.yaml and docs/pipeline.md say so."""
    docs = (ROOT / "docs" / "pipeline.md").read_text()
    for text in ((ROOT / "cluster.yaml").read_text(), docs):
        for action in ("iam:PassRole", "ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:Describe*",
                       "s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"):
            assert action in text, action
        assert "role/ugc-crop-s3" in text and "ugc-crop-head" in text
    assert "commented" not in docs.split("### On AWS")[1].split("###")[0]  # the worker profile is set, not commented out


def test_max_workers_is_configurable(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    edited = copy.deepcopy(cluster)
    edited["available_node_types"]["gpu_worker"]["max_workers"] = 3
    edited["max_workers"] = 3
    validate_config(prepare_config(edited))
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception):  # noqa: B017 - the launcher raises jsonschema's or its own, by version
        validate_config(prepare_config(broken))


def test_setup_installs_the_file_mounted_project(cluster):
    mounts = cluster["file_mounts"]
    remote = [r for r, local in mounts.items() if (ROOT / local).resolve() == ROOT]
    assert len(remote) == 1, "the repository root must be file-mounted (ray submit copies only the script)"
    assert any("pip install" in c and remote[0] in c for c in cluster["setup_commands"])
    assert any(f"export PYTHONPATH={remote[0]}" in c for c in cluster["setup_commands"]), \
        "the applications run from the mounted project folder"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == {"s2cnet"}, \
        "only the model library goes into site-packages (serve/tune/pipelines would clash)"


def test_lone_script_runs_against_the_installed_package(tmp_path):
    """Build and install the project the way setup_commands does, then run a lone copy of the script
    with the mounted project folder on PYTHONPATH: site-packages gains s2cnet (and its dependencies)
    but no top-level serve/tune/pipelines, and the applications import from the folder."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "s2cnet", "pipelines", "serve", "tune", "README.md"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / name).exists():
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("ugc-crop\n")
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--target", str(site), str(src)]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "pipelines" / "crop_bucket.py", elsewhere / "crop_bucket.py")
    installed = {p.name for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".egg-info"))}
    assert installed - {"bin"} == {"s2cnet"}, installed  # bin: the s2cnet console script
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{src}:{site}", "HOME": str(tmp_path)}
    where = "import importlib.util as u; print(u.find_spec('pipelines').origin, u.find_spec('s2cnet').origin)"
    check = subprocess.run([sys.executable, "-c", where],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    pipelines_at, s2cnet_at = check.stdout.split()
    # the mounted folder comes first on PYTHONPATH, so s2cnet too is read from it: the same files
    assert pipelines_at.startswith(str(src / "pipelines")) and s2cnet_at.startswith(str(src / "s2cnet")), check.stdout
    helped = subprocess.run([sys.executable, "crop_bucket.py", "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    for flag in ("--input", "--output", "--ratios", "--thumbnails", "--thumb-width", "--endpoint-url", "--actors",
                 "--gpus-per-actor", "--batch-size", "--limit", "--resume"):
        assert flag in helped.stdout


def test_docker_context_leaves_out_environments_history_and_outputs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "runs", "ugc-crop-demo", "**/__pycache__", "*.egg-info", ".pytest_cache"} <= ignored
    needed = {"pyproject.toml", "README.md", "s2cnet", "pipelines", "serve", "tune"}  # pip install and PYTHONPATH
    assert not needed & ignored
