"""The NetworkPolicies allow exactly the flows documented in deploy/README.md, nothing more.

`documented_flows` reads the table between `<!-- flows:start -->` and `<!-- flows:end -->`;
`allowed_flows` derives the same shape from the rendered NetworkPolicies: every ingress rule is
a flow into its pods, every egress rule a flow out of them, per peer and port. A flow between
two of our pods must be allowed on both sides. The last tests break a copy of the render.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .manifests import OVERLAYS, ROOT, Manifest, find, workloads

pytestmark = pytest.mark.unit

README = ROOT / "deploy" / "README.md"
NAME = "app.kubernetes.io/name"
PRIVATE_RANGES = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
]
NAMESPACE_PEERS = {"ingress-nginx": "ingress", "monitoring": "monitoring"}
ANY_NAMESPACE_PEERS = {"postgresql": "postgresql", "vault": "vault", "livekit-server": "livekit"}

# (direction, from, to, port): direction says whose policy must allow it.
Flow = tuple[str, str, str, str]


def documented_flows(text: str, ours: set[str]) -> set[Flow]:
    table = text.split("<!-- flows:start -->", 1)[1].split("<!-- flows:end -->", 1)[0]
    flows: set[Flow] = set()
    for line in table.strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        source, target = cells[0].strip("`"), cells[1].strip("`")
        for port in (p.strip() for p in cells[2].split(",")):
            if source in ours:
                flows.add(("egress", source, target, port))
            if target in ours:
                flows.add(("ingress", source, target, port))
    return flows


def _peer(peer: dict[str, Any]) -> str:
    if peer == {}:  # a rule without from/to: every address
        return "anyone"
    pods = peer.get("podSelector", {}).get("matchLabels", {})
    namespaces = peer.get("namespaceSelector")
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if block.get("cidr") == "0.0.0.0/0" and sorted(block.get("except", [])) == sorted(
            PRIVATE_RANGES
        ):
            return "internet"
    elif namespaces is None and set(pods) == {NAME}:
        return str(pods[NAME])
    elif namespaces == {} and set(pods) == {NAME} and pods[NAME] in ANY_NAMESPACE_PEERS:
        return ANY_NAMESPACE_PEERS[pods[NAME]]
    elif namespaces is not None:
        namespace = namespaces.get("matchLabels", {}).get("kubernetes.io/metadata.name")
        if not pods and namespace in NAMESPACE_PEERS:
            return NAMESPACE_PEERS[namespace]
        if namespace == "kube-system" and pods == {"k8s-app": "kube-dns"}:
            return "dns"
    return f"unrecognised peer {json.dumps(peer, sort_keys=True)}"


def _ports(rule: dict[str, Any]) -> list[str]:
    if not rule.get("ports"):
        return ["any port"]
    ports = []
    for port in rule["ports"]:
        number = f"{port['port']}-{port['endPort']}" if "endPort" in port else f"{port['port']}"
        ports.append(f"{number}/{port.get('protocol', 'TCP')}")
    return ports


def allowed_flows(manifests: list[Manifest]) -> set[Flow]:
    flows: set[Flow] = set()
    for policy in (m for m in manifests if m["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        pods = selector.get(NAME, "every pod")
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from") or [{}]:
                for port in _ports(rule):
                    flows.add(("ingress", _peer(peer), pods, port))
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to") or [{}]:
                for port in _ports(rule):
                    flows.add(("egress", pods, _peer(peer), port))
    return flows


def policy_problems(manifests: list[Manifest]) -> list[str]:
    """How the NetworkPolicies differ from the documented flows ([] when they match)."""
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    problems = []
    deny_all = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and sorted(p["spec"].get("policyTypes", [])) == ["Egress", "Ingress"]
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny_all:
        problems.append("no default-deny policy (podSelector {}, Ingress and Egress, no rules)")
    ours = {
        p["spec"]["podSelector"]["matchLabels"][NAME]
        for p in policies
        if NAME in p["spec"]["podSelector"].get("matchLabels", {})
    }
    for workload in workloads(manifests):
        label = workload["spec"]["template"]["metadata"]["labels"][NAME]
        if label not in ours:
            problems.append(f"{workload['kind']} {label}: no NetworkPolicy allows its flows")
    expected = documented_flows(README.read_text(), ours)
    allowed = allowed_flows(manifests)
    problems += [f"allowed but not documented: {flow}" for flow in sorted(allowed - expected)]
    problems += [f"documented but not allowed: {flow}" for flow in sorted(expected - allowed)]
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_documented_flows(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    assert policy_problems(rendered[overlay]) == []


def test_the_flow_table_names_every_service_and_the_architecture_flows() -> None:
    text = README.read_text()
    flows = documented_flows(text, {"gateway", "registry", "tool-vault", "voice-worker", "nats"})
    assert ("ingress", "ingress", "gateway", "8080/TCP") in flows
    assert ("ingress", "ingress", "tool-vault", "8090/TCP") in flows
    assert ("egress", "voice-worker", "internet", "443/TCP") in flows
    assert ("egress", "tool-vault", "vault", "8200/TCP") in flows
    # Nobody but tool-vault reaches Vault; the registry never reaches the internet.
    assert not [f for f in flows if f[2] == "vault" and f[1] != "tool-vault"]
    assert not [f for f in flows if f[1] == "registry" and f[2] == "internet"]
    assert re.search(r"<!-- flows:start -->", text)


def test_an_extra_port_is_caught(prod: list[Manifest]) -> None:
    worker = find(prod, "NetworkPolicy", "voice-worker")
    worker["spec"]["egress"][0]["ports"].append({"protocol": "TCP", "port": 5432})
    assert policy_problems(prod) == [
        "allowed but not documented: ('egress', 'voice-worker', 'nats', '5432/TCP')"
    ]


def test_a_missing_flow_is_caught(prod: list[Manifest]) -> None:
    tool_vault = find(prod, "NetworkPolicy", "tool-vault")
    tool_vault["spec"]["egress"] = [
        rule for rule in tool_vault["spec"]["egress"] if rule["ports"][0]["port"] != 8200
    ]
    assert policy_problems(prod) == [
        "documented but not allowed: ('egress', 'tool-vault', 'vault', '8200/TCP')"
    ]


def test_a_rule_open_to_everyone_is_caught(prod: list[Manifest]) -> None:
    registry = find(prod, "NetworkPolicy", "registry")
    del registry["spec"]["ingress"][0]["from"]
    problems = policy_problems(prod)
    assert "allowed but not documented: ('ingress', 'anyone', 'registry', '8081/TCP')" in problems


def test_losing_the_default_deny_is_caught(prod: list[Manifest]) -> None:
    deny = find(prod, "NetworkPolicy", "default-deny")
    deny["spec"]["ingress"] = [{}]
    problems = policy_problems(prod)
    assert problems[0].startswith("no default-deny policy")
