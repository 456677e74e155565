"""Rendering and looking up the Kubernetes manifests under deploy/k8s, with the pinned kustomize
binary (`.local/bin/kustomize`, installed by `infra/install.sh` at KUSTOMIZE_VERSION)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / ".local" / "bin" / "kustomize"
OVERLAYS = ("dev", "prod")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")

Manifest = dict[str, Any]


class RenderError(RuntimeError):
    """kustomize is missing or refused to build a kustomization."""


def render(path: Path) -> list[Manifest]:
    """`kustomize build <path>` as a list of objects."""
    if not KUSTOMIZE.exists():
        raise RenderError(f"{KUSTOMIZE} is missing: run ./infra/install.sh (pins kustomize)")
    result = subprocess.run(
        [str(KUSTOMIZE), "build", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"kustomize build {path} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_overlay(name: str) -> list[Manifest]:
    return render(ROOT / "deploy" / "k8s" / "overlays" / name)


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    """The object of this kind and name (generated names carry kustomize's hash suffix)."""
    pattern = re.compile(re.escape(name) + r"(-[a-z0-9]{10})?")
    for manifest in manifests:
        if manifest["kind"] == kind and pattern.fullmatch(manifest["metadata"]["name"]):
            return manifest
    raise LookupError(f"no {kind} {name} in the render")


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec
