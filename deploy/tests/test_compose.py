"""docker-compose.yml: everything it builds exists, every variable it reads is documented in
.env.example, every secret is required (`${VAR:?message}`), and start-up order waits on health.
The checks read text so the last tests can hand them a broken copy."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from .manifests import ROOT

pytestmark = pytest.mark.unit

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "SIGNING_KEY")
OUR_SERVICES = {
    "services/gateway/Dockerfile": "voiceagents-gateway",
    "services/agent-registry/Dockerfile": "voiceagents-registry",
    "services/tool-vault/Dockerfile": "voiceagents-toolvault",
    "services/voice-worker/Dockerfile": "voiceagents-worker",
}


def documented(env_example: str) -> set[str]:
    return {
        line.split("=", 1)[0]
        for line in env_example.splitlines()
        if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", line)
    }


def compose_problems(compose_text: str, env_example: str) -> list[str]:
    problems = []
    compose: dict[str, Any] = yaml.safe_load(compose_text)
    services: dict[str, Any] = compose["services"]
    # Compose interpolates everywhere but in comments.
    text = "\n".join(
        line for line in compose_text.splitlines() if not line.lstrip().startswith("#")
    )
    used = {match.group(1) for match in VARIABLE.finditer(text)}
    docs = documented(env_example)
    problems += [f"{name} is not documented in .env.example" for name in sorted(set(used) - docs)]
    problems += [f".env.example documents unused {name}" for name in sorted(docs - set(used))]
    for match in VARIABLE.finditer(text):
        name, default = match.group(1), match.group(2) or ""
        if any(word in name for word in SECRET_WORDS) and not default.startswith(":?"):
            problems.append(f"secret {name} is not required (${{{name}:?message}})")
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            dockerfile = ROOT / build.get("context", ".") / build["dockerfile"]
            if build.get("context") != "." or not dockerfile.is_file():
                problems.append(f"{name} builds {dockerfile}, which does not exist at the root")
            elif (package := OUR_SERVICES.get(build["dockerfile"])) and (
                f"--package {package}" not in dockerfile.read_text()
            ):
                problems.append(f"{name}: {build['dockerfile']} does not install {package}")
            if not (service.get("read_only") and service.get("cap_drop") == ["ALL"]):
                problems.append(f"{name} runs with a writable root or capabilities")
        for dependency, condition in (service.get("depends_on") or {}).items():
            if dependency not in services:
                problems.append(f"{name} depends on missing service {dependency}")
            elif condition.get("condition") == "service_healthy" and (
                "healthcheck" not in services[dependency]
            ):
                problems.append(
                    f"{name} waits for {dependency} to be healthy; it has no healthcheck"
                )
    built = {s["build"]["dockerfile"] for s in services.values() if "build" in s}
    problems += [f"nothing builds {path}" for path in sorted(set(OUR_SERVICES) - built)]
    return problems


def test_compose_builds_real_services_and_documents_every_variable() -> None:
    assert compose_problems(COMPOSE.read_text(), ENV_EXAMPLE.read_text()) == []


def test_compose_runs_the_whole_stack() -> None:
    services = set(yaml.safe_load(COMPOSE.read_text())["services"])
    assert {
        "postgres",
        "nats",
        "vault",
        "vault-init",
        "redis",
        "livekit",
        "livekit-sip",
        "registry-migrate",
        "registry",
        "tool-vault",
        "gateway",
        "voice-worker",
    } <= services


def test_the_example_env_holds_no_secret_values() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, _, value = line.partition("=")
        if any(word in name for word in SECRET_WORDS) and not line.startswith("#"):
            assert value == "", f"{name} has a value in .env.example"


def test_an_undocumented_variable_is_caught() -> None:
    broken = COMPOSE.read_text().replace(
        'VA_WORKER_DRAIN_TIMEOUT_SECONDS: "3600"',
        "VA_WORKER_DRAIN_TIMEOUT_SECONDS: ${DRAIN:-3600}",
    )
    assert compose_problems(broken, ENV_EXAMPLE.read_text()) == [
        "DRAIN is not documented in .env.example"
    ]


def test_a_defaulted_secret_is_caught() -> None:
    broken = COMPOSE.read_text().replace(
        "${GOOGLE_API_KEY:?set GOOGLE_API_KEY in .env (Gemini)}", "${GOOGLE_API_KEY:-}"
    )
    assert compose_problems(broken, ENV_EXAMPLE.read_text()) == [
        "secret GOOGLE_API_KEY is not required (${GOOGLE_API_KEY:?message})"
    ]


def test_a_missing_dockerfile_is_caught() -> None:
    broken = COMPOSE.read_text().replace(
        "dockerfile: services/voice-worker/Dockerfile", "dockerfile: services/worker/Dockerfile"
    )
    assert compose_problems(broken, ENV_EXAMPLE.read_text()) == [
        f"voice-worker builds {ROOT}/services/worker/Dockerfile, which does not exist at the root",
        "nothing builds services/voice-worker/Dockerfile",
    ]


def test_waiting_on_a_service_without_healthcheck_is_caught() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    del compose["services"]["nats"]["healthcheck"]
    problems = compose_problems(yaml.safe_dump(compose), ENV_EXAMPLE.read_text())
    assert "gateway waits for nats to be healthy; it has no healthcheck" in problems
