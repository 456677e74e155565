"""Every workload is hardened, probed and sized; voice workers never lose a call to a scale-down.

`hardening_problems` is the check; the last tests break a copy of the render and show that the
check notices.
"""

from __future__ import annotations

from typing import Any

import pytest

from .manifests import OVERLAYS, Manifest, find, pod_spec, workloads

pytestmark = pytest.mark.unit

SERVICES = ("gateway", "registry", "tool-vault", "voice-worker")


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = spec.get("initContainers", []) + spec["containers"]
    return containers


def hardening_problems(manifests: list[Manifest]) -> list[str]:
    """Everything that makes a workload less than hardened, probed and sized ([] when none)."""
    problems: list[str] = []
    for workload in workloads(manifests):
        name = f"{workload['kind']} {workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True:
            problems.append(f"{name}: pod does not set runAsNonRoot: true")
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{name}: pod shares a host namespace")
        for container in _containers(spec):
            where = f"{name} container {container['name']}"
            security = container.get("securityContext", {})
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: does not drop ALL capabilities")
            if security.get("privileged") or security.get("runAsNonRoot") is False:
                problems.append(f"{where}: runs privileged or as root")
            if security.get("runAsUser") == 0:
                problems.append(f"{where}: runs as uid 0")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                    problems.append(f"{where}: no cpu and memory {kind}")
        if workload["kind"] in ("Deployment", "StatefulSet"):
            for container in spec["containers"]:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in container:
                        problems.append(f"{name} container {container['name']}: no {probe}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_hardened_probed_and_sized(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    assert hardening_problems(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_services_own_health_endpoints(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    for service in ("gateway", "registry", "tool-vault"):
        container = pod_spec(find(rendered[overlay], "Deployment", service))["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker = pod_spec(find(rendered[overlay], "Deployment", "voice-worker"))["containers"][0]
    # The worker serves /healthz and /readyz next to /metrics on VA_WORKER_METRICS_PORT.
    config = find(rendered[overlay], "ConfigMap", "voice-worker")["data"]
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert ports["health"] == int(config["VA_WORKER_HTTP_PORT"])
    assert ports["metrics"] == int(config["VA_WORKER_METRICS_PORT"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_voice_workers_get_exactly_the_cpu_and_memory_they_are_sized_for(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    worker = pod_spec(find(rendered[overlay], "Deployment", "voice-worker"))["containers"][0]
    assert worker["resources"]["requests"] == worker["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scale_down_never_cuts_a_call(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    worker = find(manifests, "Deployment", "voice-worker")
    drain = int(
        find(manifests, "ConfigMap", "voice-worker")["data"]["VA_WORKER_DRAIN_TIMEOUT_SECONDS"]
    )
    longest_call = int(
        find(manifests, "ConfigMap", "gateway")["data"]["VA_GATEWAY_MAX_CALL_SECONDS"]
    )
    # A draining worker finishes even the longest call, and Kubernetes waits for it to do so.
    assert drain >= longest_call
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > drain
    # A rollout adds new workers before an old one starts draining.
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_workers_scale_on_calls_before_they_fill_and_down_slowly(
    rendered: dict[str, list[Manifest]],
) -> None:
    scaled = find(rendered["prod"], "ScaledObject", "voice-worker")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "active_calls" in trigger["metadata"]["query"]
    assert "capacity" in trigger["metadata"]["query"]
    assert 0 < float(trigger["metadata"]["threshold"]) < 1  # target fill below full
    assert scaled["spec"]["minReplicaCount"] >= 1
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    hpas = {
        m["spec"]["scaleTargetRef"]["name"]
        for m in rendered["prod"]
        if m["kind"] == "HorizontalPodAutoscaler"
    }
    assert hpas == {"gateway", "registry", "tool-vault"}
    # The autoscalers own the replica counts.
    for service in SERVICES:
        assert "replicas" not in find(rendered["prod"], "Deployment", service)["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_and_nats_has_a_disruption_budget(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    budgets = {
        m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for m in rendered[overlay]
        if m["kind"] == "PodDisruptionBudget"
    }
    assert budgets == {*SERVICES, "nats"}


def test_a_writable_root_filesystem_is_caught(prod: list[Manifest]) -> None:
    container = pod_spec(find(prod, "Deployment", "tool-vault"))["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    assert hardening_problems(prod) == [
        "Deployment tool-vault container tool-vault: root filesystem is writable"
    ]


def test_a_missing_probe_is_caught(prod: list[Manifest]) -> None:
    del pod_spec(find(prod, "Deployment", "voice-worker"))["containers"][0]["livenessProbe"]
    assert hardening_problems(prod) == [
        "Deployment voice-worker container voice-worker: no livenessProbe"
    ]


def test_running_as_root_is_caught(prod: list[Manifest]) -> None:
    spec = pod_spec(find(prod, "Job", "registry-migrate"))
    spec["securityContext"]["runAsNonRoot"] = False
    spec["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    assert hardening_problems(prod) == [
        "Job registry-migrate: pod does not set runAsNonRoot: true",
        "Job registry-migrate container migrate: does not drop ALL capabilities",
    ]
