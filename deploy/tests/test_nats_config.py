"""NATS runs with one config everywhere: the Secret in the manifests is infra/nats/nats-server.conf
byte for byte (the file the tests start NATS with), NATS mounts it, docker compose mounts the
file itself, and every password the file reads from the environment is given to NATS."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from .manifests import OVERLAYS, ROOT, Manifest, find, pod_spec

pytestmark = pytest.mark.unit

CONFIG = ROOT / "infra" / "nats" / "nats-server.conf"


def nats_config_problems(manifests: list[Manifest]) -> list[str]:
    problems = []
    secret = find(manifests, "Secret", "nats-config")
    content = base64.b64decode(secret["data"]["nats-server.conf"])
    if content != CONFIG.read_bytes():
        problems.append("Secret nats-config differs from infra/nats/nats-server.conf")
    nats = find(manifests, "StatefulSet", "nats")
    volumes = {v["name"]: v for v in pod_spec(nats)["volumes"]}
    if volumes.get("config", {}).get("secret", {}).get("secretName") != secret["metadata"]["name"]:
        problems.append("NATS does not mount Secret nats-config")
    container = pod_spec(nats)["containers"][0]
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    if config_path != f"{mount['mountPath']}/nats-server.conf":
        problems.append(f"NATS is started with {config_path}, not the mounted file")
    wanted = set(re.findall(r"\$(VA_NATS_[A-Z]+_PASSWORD)", CONFIG.read_text()))
    given = {env["name"] for env in container.get("env", [])}
    problems += [f"NATS is not given {name}" for name in sorted(wanted - given)]
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_start_nats_with_the_tested_config(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    assert nats_config_problems(rendered[overlay]) == []


def test_docker_compose_mounts_the_same_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    nats = compose["services"]["nats"]
    assert "./infra/nats/nats-server.conf:/etc/nats/nats-server.conf:ro" in nats["volumes"]
    command = nats["command"]
    assert command[command.index("--config") + 1] == "/etc/nats/nats-server.conf"
    wanted = set(re.findall(r"\$(VA_NATS_[A-Z]+_PASSWORD)", CONFIG.read_text()))
    assert wanted == set(nats["environment"])


def test_every_service_connects_as_its_own_nats_user(rendered: dict[str, list[Manifest]]) -> None:
    users = {
        "gateway": "gateway",
        "registry": "registry",
        "tool-vault": "toolvault",
        "voice-worker": "worker",
    }
    for deployment, user in users.items():
        container = pod_spec(find(rendered["prod"], "Deployment", deployment))["containers"][0]
        passwords = [e for e in container["env"] if e["name"].startswith("VA_NATS_")]
        assert [(e["name"], e["valueFrom"]["secretKeyRef"]["key"]) for e in passwords] == [
            (f"VA_NATS_{user.upper()}_PASSWORD", user)
        ]


def test_a_changed_config_is_caught(prod: list[Manifest]) -> None:
    secret = find(prod, "Secret", "nats-config")
    content = base64.b64decode(secret["data"]["nats-server.conf"]).replace(
        b'deny: ["toolvault.v1.release"]', b"deny: []"
    )
    secret["data"]["nats-server.conf"] = base64.b64encode(content).decode()
    assert nats_config_problems(prod) == [
        "Secret nats-config differs from infra/nats/nats-server.conf"
    ]


def test_a_missing_password_is_caught(prod: list[Manifest]) -> None:
    container = pod_spec(find(prod, "StatefulSet", "nats"))["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "VA_NATS_WORKER_PASSWORD"]
    assert nats_config_problems(prod) == ["NATS is not given VA_NATS_WORKER_PASSWORD"]
