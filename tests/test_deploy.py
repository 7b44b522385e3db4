"""The deployment files: the multi-stage Dockerfile, the pinned constraints, the KubeRay RayJob, and
the dashboard image's dependency set (the gate and the dashboard run with nothing else installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"common", "workers", "pipeline", "dashboard", "cuebench"}


def _requirements(extras: list[str]) -> list[str]:
    spec = importlib.util.spec_from_file_location("deploy_requirements", ROOT / "deploy" / "requirements.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.requirements(extras)


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"FROM \S+ AS (\w+)", line)
        if m:
            current = m.group(1)
            stages[current] = [line]
        elif line and not line.startswith("#") and current:
            stages[current].append(line)
    return stages


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_dockerfile_stages_install_dependencies_before_sources():
    stages = _stages()
    assert list(stages) == ["base", "audit", "dashboard"]
    assert stages["audit"][0].startswith("FROM base") and stages["dashboard"][0].startswith("FROM base")
    assert any("PIP_CONSTRAINT=/opt/cueaudit/deploy/constraints.txt" in i for i in stages["base"])
    extras = {"base": "deploy/requirements.py >", "audit": "deploy/requirements.py audit cluster timm >",
              "dashboard": "deploy/requirements.py dashboard >"}
    for name, lines in stages.items():
        deps = next(i for i, line in enumerate(lines) if extras[name] in line and "pip install -r" in line)
        copies = [i for i, line in enumerate(lines) if re.match(r"COPY (\w+) ", line)
                  and line.split()[1] in SOURCES]
        assert all(i > deps for i in copies), f"stage {name}: a source is copied before the dependencies"
        before = [line for line in lines[:deps] if line.startswith("COPY")]
        assert all(("pyproject.toml" in c or "deploy/" in c) for c in before), before
    copied = {line.split()[1] for line in stages["dashboard"] if line.startswith("COPY")}
    assert not copied & {"workers", "cuebench"}  # the dashboard image carries no worker code
    assert stages["dashboard"][-1] == ('CMD ["cueaudit", "dashboard", "/data/results", "--wait", "--host", '
                                       '"0.0.0.0", "--port", "8501"]')


def test_every_image_requirement_is_pinned_within_its_range():
    pins = _pins()
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for raw in _requirements(["audit", "cluster", "timm", "dashboard"]) + build:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt (run python deploy/lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {raw}"
    ray = [Requirement(r) for r in _requirements(["cluster"]) if Requirement(r).name == "ray"]
    assert any("default" in r.extras for r in ray)  # Ray's dashboard and job server on the nodes
    for extra_pkg in ("aiohttp", "opencensus", "py-spy"):  # ray[default]'s own dependencies are locked too
        assert extra_pkg in pins


def test_kuberay_rayjob_has_the_fields_the_crd_requires():
    """Field names and required lists from KubeRay's CRD (ray-operator/config/crd/bases/ray.io_rayjobs.yaml)."""
    (job,) = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text()))
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("cueaudit run ") and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _pins()["ray"]  # the image's Ray
    groups = [("head", cluster["headGroupSpec"])] + [(w["groupName"], w) for w in cluster["workerGroupSpecs"]]
    for name, group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name  # map[string]string
        (container,) = group["template"]["spec"]["containers"]
        assert container["name"] and container["image"].startswith("cueaudit-audit:")
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"] for v in group["template"]["spec"]["volumes"]}
        assert "/data" in mounts and set(mounts.values()) <= volumes
    for w in cluster["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(w)
        assert w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
        (container,) = w["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == w["rayStartParams"]["num-gpus"] == "1"


def _closure(requirements: list[str]) -> set[str]:
    """Distributions installed by ``requirements`` and, recursively, theirs (markers evaluated here)."""
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, parent_extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            continue  # an optional dependency this environment lacks: the image lacks it too
        for extra in [""] + sorted(req.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            todo += [(Requirement(r), extra) for r in dist.requires or []]
    return {n for n, _ in seen}


BLOCKER = r'''
import json, os, sys
from importlib.metadata import packages_distributions
from packaging.utils import canonicalize_name
allowed = set(json.loads(os.environ["CLOSURE"]))
# Every installed top-level module outside the image's dependency set reads as absent, as in the
# image: `import x` raises ModuleNotFoundError and importlib.util.find_spec("x") returns None.
absent = {t for t, dists in packages_distributions().items() if not any(canonicalize_name(d) in allowed for d in dists)}
absent = (absent - {"pipeline", "dashboard", "common"}) | {"workers", "cuebench"}  # what the image copies
for top in absent - set(sys.modules):
    sys.modules[top] = None
'''

RUN = r'''
from typer.testing import CliRunner
from pipeline.cli import app
results = os.environ["CUEAUDIT_RESULTS"]
for cmd in (["gate", results], ["report", results], ["schema"]):
    res = CliRunner().invoke(app, cmd)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code in (0, 1), (cmd, res.output)  # 1: the fake results hold a failing model
from streamlit.testing.v1 import AppTest
for page in ("Overview", "Model", "Image explorer", "Compare"):
    at = AppTest.from_file("dashboard/app.py", default_timeout=120)
    at.session_state["page"] = page
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
print(json.dumps({"absent": sorted(t for t in ("torch", "ray", "torchvision") if sys.modules.get(t) is None)}))
'''


@pytest.mark.slow
def test_gate_and_dashboard_run_with_only_the_dashboard_images_dependencies(tmp_path):
    from tests.dashboard.fakes import write_results

    fake_results = write_results(tmp_path)
    closure = _closure(_requirements(["dashboard"]))
    assert "streamlit" in closure and not {"torch", "ray", "torchvision"} & closure
    env = {**os.environ, "CLOSURE": json.dumps(sorted(closure)), "CUEAUDIT_RESULTS": str(fake_results.root),
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", BLOCKER + RUN], check=False, cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["absent"] == ["ray", "torch", "torchvision"]
