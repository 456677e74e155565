"""`infra/install.sh`: an install that cannot happen says so in one line naming the missing piece.

Each test runs a copy of the script in a scratch project whose `versions.env` pins something
that cannot be fetched (the Debian packages are already there: `make test` installed them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def scratch_project(tmp_path: Path, **pins: str) -> Path:
    infra = tmp_path / "project" / "infra"
    infra.mkdir(parents=True)
    shutil.copy(ROOT / "infra" / "install.sh", infra / "install.sh")
    versions = (ROOT / "infra" / "versions.env").read_text()
    for name, value in pins.items():
        versions = "\n".join(
            f"{name}={value}" if line.startswith(f"{name}=") else line
            for line in versions.splitlines()
        )
    (infra / "versions.env").write_text(versions + "\n")
    return infra / "install.sh"


def run_install(script: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VA_CACHE_DIR": str(tmp_path / "cache"), **env},
    )


def test_a_go_module_that_cannot_be_fetched_is_named_in_one_line(tmp_path: Path) -> None:
    script = scratch_project(tmp_path, NATS_SERVER_VERSION="v0.0.0-no-such-version")

    # GOPROXY=off: as if the module proxy were unreachable.
    result = run_install(script, tmp_path, GOPROXY="off", GOFLAGS="")

    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("install: could not install nats-server v0.0.0-no-such-version")
    assert "Traceback" not in result.stdout + result.stderr
    log = tmp_path / "project" / ".local" / "log" / "nats-server.log"
    assert log.read_text(), "the go install output is kept in the log the line names"
    assert str(log) in errors[0]


def test_a_missing_go_toolchain_is_named_in_one_line(tmp_path: Path) -> None:
    script = scratch_project(tmp_path)
    # A PATH with bash and the coreutils/dpkg the script needs, but no `go`.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "mkdir", "dpkg-query", "grep", "id", "ln", "rm"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)

    result = run_install(script, tmp_path, PATH=str(bin_dir))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "install: Go is not installed; nats-server "
        + pinned("NATS_SERVER_VERSION")
        + " is built with 'go install'"
    ]


def pinned(name: str) -> str:
    for line in (ROOT / "infra" / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} is not pinned")
