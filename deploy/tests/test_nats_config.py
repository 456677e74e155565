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


# -- JetStream API permissions (docs/architecture.md, "NATS layout") ----------------------------
#
# A stream's subjects travel in the body of a create or update request, so a user who may create
# or update streams at will can capture any subject of the account, secrets included. The
# services may only create the streams they own (by exact name) and use consumers on the streams
# they read; updating, deleting or purging streams is for `ops` alone. The server-side checks are
# in services/tool-vault/tests/test_nats_permissions.py; this reads the file itself.

OWNED_STREAMS = {
    "registry": {"REGISTRY", "DEADLETTER", "KV_agent-config", "KV_phone-numbers"},
    "gateway": {"CALLS", "KV_agent-config", "KV_phone-numbers"},
    "toolvault": {"TOOLVAULT", "CALLS", "KV_agent-config", "KV_phone-numbers"},
    "worker": {"CALLS"},
}
# What a service may do to a stream by API: read it, and make or read consumers on it.
STREAM_VERBS = {"CREATE", "INFO", "MSG.GET"}
CONSUMER_VERBS = {"CREATE", "DURABLE.CREATE", "INFO", "MSG.NEXT"}


def publish_permissions(user: str) -> tuple[list[str], list[str]]:
    """The publish allow and deny lists of one user in the config."""
    text = re.sub(r"#[^\n]*", "", CONFIG.read_text())
    block = text.split(f"user: {user}\n", 1)[1].split("user:", 1)[0]
    publish = block.split("publish", 1)[1].split("subscribe", 1)[0]
    lists = {
        kind: re.findall(r'"([^"]+)"', found.group(1)) if found else []
        for kind in ("allow", "deny")
        for found in [re.search(kind + r":\s*\[(.*?)\]", publish, re.S)]
    }
    return lists["allow"], lists["deny"]


def jetstream_problems(user: str, allowed: list[str]) -> list[str]:
    problems = []
    for subject in allowed:
        if not subject.startswith("$JS."):
            continue
        parts = subject.split(".")
        if parts[1] in ("ACK", "FC"):
            if len(parts) < 4 or "*" in parts[2] or ">" in parts[2]:
                problems.append(f"{user} may ack or flow-control any stream: {subject}")
            continue
        api = ".".join(parts[1:])
        match = re.fullmatch(
            r"API\.(STREAM|CONSUMER|DIRECT)\.(MSG\.GET|MSG\.NEXT|DURABLE\.CREATE|GET|[A-Z]+)\.([^.]+)(\..*)?",
            api,
        )
        if match is None:
            problems.append(f"{user} may use {subject}")
            continue
        kind, verb, stream, _ = match.groups()
        if stream in ("*", ">"):
            problems.append(f"{user} may use {kind} {verb} on any stream: {subject}")
        elif kind == "STREAM" and verb not in STREAM_VERBS:
            problems.append(f"{user} may {verb} stream {stream}")
        elif kind == "STREAM" and verb == "CREATE" and stream not in OWNED_STREAMS[user]:
            problems.append(f"{user} may create stream {stream}, which it does not own")
        elif kind == "CONSUMER" and verb not in CONSUMER_VERBS:
            problems.append(f"{user} may {verb} consumers of {stream}")
        elif kind == "DIRECT" and verb != "GET":
            problems.append(f"{user} may use {subject}")
    return problems


@pytest.mark.parametrize("user", sorted(OWNED_STREAMS))
def test_services_use_only_the_jetstream_api_of_their_streams(user: str) -> None:
    allowed, _ = publish_permissions(user)
    assert jetstream_problems(user, allowed) == []
    creatable = {
        s.removeprefix("$JS.API.STREAM.CREATE.")
        for s in allowed
        if s.startswith("$JS.API.STREAM.CREATE.")
    }
    assert creatable == OWNED_STREAMS[user]


def test_the_whole_jetstream_api_is_caught() -> None:
    assert jetstream_problems("gateway", ["$JS.API.>"]) == ["gateway may use $JS.API.>"]
    assert jetstream_problems("worker", ["$JS.API.STREAM.UPDATE.CALLS"]) == [
        "worker may UPDATE stream CALLS"
    ]
    assert jetstream_problems("worker", ["$JS.API.STREAM.CREATE.*"]) == [
        "worker may use STREAM CREATE on any stream: $JS.API.STREAM.CREATE.*"
    ]
    assert jetstream_problems("gateway", ["$JS.API.STREAM.CREATE.SNOOP"]) == [
        "gateway may create stream SNOOP, which it does not own"
    ]
    assert jetstream_problems("registry", ["$JS.API.CONSUMER.DELETE.CALLS.x"]) == [
        "registry may DELETE consumers of CALLS"
    ]
    assert jetstream_problems("worker", ["$JS.ACK.>"]) == [
        "worker may ack or flow-control any stream: $JS.ACK.>"
    ]


def test_the_registrys_consumers_are_named_as_in_its_code() -> None:
    # The config lets the registry use its durable consumers by name and denies them to
    # tool-vault, which reads CALLS too: a renamed consumer must be renamed there as well.
    source = ROOT / "services" / "agent-registry" / "src" / "voiceagents" / "registry"
    names = set()
    for module, constant in (
        ("calllog.py", "CALL_LOG_DURABLE"),
        ("oauth.py", "AUTH_STATUS_DURABLE"),
    ):
        found = re.search(rf'^{constant} = "([^"]+)"$', (source / module).read_text(), re.M)
        assert found is not None, f"{constant} not in {module}"
        names.add(found.group(1))
    allowed, _ = publish_permissions("registry")
    named = {s.split(".")[-1] for s in allowed if s.startswith("$JS.API.CONSUMER.MSG.NEXT.")}
    assert named == names
    _, denied = publish_permissions("toolvault")
    assert "$JS.API.CONSUMER.*.CALLS.registry-call-log" in denied
    assert names & {s.split(".")[-1] for s in denied} == {"registry-call-log"}
