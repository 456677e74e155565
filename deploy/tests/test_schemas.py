"""Every rendered object validates against the Kubernetes JSON schemas, offline.

Schemas come from the `kubernetes-validate` package (installed from PyPI with the dev
dependencies; nothing is downloaded at test time), in strict mode: an unknown or misspelt field
is an error, not silently dropped by the API server. KEDA's ScaledObject is not a Kubernetes
kind: it is checked against SCALED_OBJECT below, written from KEDA's documented ScaledObject
spec (keda.sh/v1alpha1), whose HPA `behavior` part is Kubernetes' own schema.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import referencing

from .manifests import OVERLAYS, Manifest, find

pytestmark = pytest.mark.unit

# The oldest Kubernetes minor we support (NetworkPolicy endPort, HPA v2 behavior, PDB policy/v1
# are all GA there) and the newest the schema package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"

SCALED_OBJECT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "$ref": f"{DEFINITIONS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "$ref": f"{DEFINITIONS_URI}#/$defs/"
                                    "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"
                                },
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object"},
                            # KEDA trigger metadata values are strings, always.
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _definitions(version: str) -> Any:
    major_minor = ".".join(version.split(".")[:2])
    folder = f"v{major_minor}.0-local-strict"
    path = resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder
    return json.loads((path / "_definitions.json").read_text())


def schema_errors(manifest: Manifest, version: str) -> list[str]:
    """What is wrong with this object for this Kubernetes version ([] when it validates)."""
    where = f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')}"
    if manifest.get("kind") == "ScaledObject":
        registry: referencing.Registry[Any] = referencing.Registry().with_resource(
            DEFINITIONS_URI, referencing.Resource.from_contents(_definitions(version))
        )
        validator = jsonschema.Draft202012Validator(SCALED_OBJECT, registry=registry)
        return [
            f"{where}: {error.message} at {list(error.absolute_path)}"
            for error in validator.iter_errors(manifest)
        ]
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {manifest.get('apiVersion')} in Kubernetes {version}"]
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {error.message} at {list(error.absolute_path)}"]
    return []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_every_overlay_validates(
    rendered: dict[str, list[Manifest]], overlay: str, version: str
) -> None:
    errors = [error for manifest in rendered[overlay] for error in schema_errors(manifest, version)]
    assert errors == []


def test_overlays_render_what_each_environment_needs(rendered: dict[str, list[Manifest]]) -> None:
    kinds = {overlay: {m["kind"] for m in rendered[overlay]} for overlay in OVERLAYS}
    assert {"ScaledObject", "HorizontalPodAutoscaler"} <= kinds["prod"]
    assert "ScaledObject" not in kinds["dev"]
    assert find(rendered["prod"], "Job", "vault-configure")
    assert find(rendered["prod"], "StatefulSet", "nats")["spec"]["replicas"] == 3
    for overlay in OVERLAYS:
        assert "NetworkPolicy" in kinds[overlay]
        for manifest in rendered[overlay]:
            if manifest["kind"] != "Namespace":
                assert (
                    manifest["metadata"]["namespace"] == f"voiceagents{'-dev' * (overlay == 'dev')}"
                )


def test_a_misspelt_field_fails_validation(prod: list[Manifest]) -> None:
    gateway = find(prod, "Deployment", "gateway")
    gateway["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/readyz", "port": "http"}
    }
    assert schema_errors(gateway, KUBERNETES_VERSIONS[0]) != []


def test_a_wrongly_typed_value_fails_validation(prod: list[Manifest]) -> None:
    registry = find(prod, "Deployment", "registry")
    registry["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8081"
    assert schema_errors(registry, KUBERNETES_VERSIONS[0]) != []


def test_a_broken_scaled_object_fails_validation(prod: list[Manifest]) -> None:
    scaled = find(prod, "ScaledObject", "voice-worker")
    assert schema_errors(scaled, KUBERNETES_VERSIONS[0]) == []
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"
    ] = "fifteen minutes"
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 0.7
    assert len(schema_errors(scaled, KUBERNETES_VERSIONS[0])) == 2
