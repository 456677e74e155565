"""Each service image: built from the uv workspace with only its own package, and a final stage
that runs as a numeric non-root user, holds no build tool and no secret, and checks its health."""

from __future__ import annotations

import re
import tomllib

import pytest

from .manifests import ROOT

pytestmark = pytest.mark.unit

SERVICES = ("gateway", "agent-registry", "tool-vault", "voice-worker")
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|SIGNING_KEY", re.IGNORECASE)


def final_stage(dockerfile: str) -> str:
    return re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[-1]


def dockerfile_problems(dockerfile: str, package: str) -> list[str]:
    problems = []
    if f"uv sync --frozen --no-dev --no-editable --package {package}" not in dockerfile:
        problems.append(f"does not install exactly {package} from uv.lock")
    final = final_stage(dockerfile)
    user = re.findall(r"^USER (\S+)", final, flags=re.MULTILINE)
    if not user or not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user[-1]):
        problems.append("final stage does not run as a numeric non-root USER")
    if re.search(r"\buv\b|apt-get install|build-essential|gcc", final):
        problems.append("final stage carries a build tool")
    if "HEALTHCHECK" not in final:
        problems.append("final stage has no HEALTHCHECK")
    for line in re.sub(r"\\\n\s*", " ", final).splitlines():
        if re.match(r"(ENV|ARG)\b", line):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", line):
                if SECRET_WORDS.search(name):
                    problems.append(f"final stage bakes in a secret: {name}")
    if re.search(r"^COPY (?!--from=)", final, flags=re.MULTILINE):
        problems.append("final stage copies from the build context instead of the build stage")
    return problems


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_image_is_slim_non_root_and_secret_free(service: str) -> None:
    project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    dockerfile = (ROOT / "services" / service / "Dockerfile").read_text()
    assert dockerfile_problems(dockerfile, project["project"]["name"]) == []


def test_the_worker_image_fetches_its_model_files_at_build_time() -> None:
    dockerfile = (ROOT / "services" / "voice-worker" / "Dockerfile").read_text()
    build = dockerfile.split("AS runtime", 1)[0]
    assert "python -m livekit.agents download-files" in build
    # Nothing may be fetched on the first call: the runtime refuses to download.
    assert "HF_HUB_OFFLINE=1" in final_stage(dockerfile)


def test_the_images_use_the_pinned_uv() -> None:
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "infra" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    for service in SERVICES:
        dockerfile = (ROOT / "services" / service / "Dockerfile").read_text()
        assert f"ghcr.io/astral-sh/uv:{versions['UV_VERSION']} AS uv" in dockerfile


def test_a_root_user_or_baked_secret_is_caught() -> None:
    dockerfile = (ROOT / "services" / "gateway" / "Dockerfile").read_text()
    broken = dockerfile.replace("USER 10001:10001", "USER root").replace(
        "PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 VA_GATEWAY_TWILIO_AUTH_TOKEN=abc"
    )
    assert dockerfile_problems(broken, "voiceagents-gateway") == [
        "final stage does not run as a numeric non-root USER",
        "final stage bakes in a secret: VA_GATEWAY_TWILIO_AUTH_TOKEN",
    ]
