"""The pieces of the demo stack that tests lean on: a service process can be killed with its
children and restarted, and the OAuth provider stand-in enforces PKCE and the client secret.
(The whole stack runs in the end-to-end tests, e2e/.)"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from voiceagents.devstack.oauth_provider import OAuthProviderStandIn
from voiceagents.devstack.stack import Service

pytestmark = pytest.mark.unit

# A service that starts a child process (as the voice worker starts job processes), writes the
# child's pid to its log, then says it is ready.
PARENT_WITH_CHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(f'child {child.pid}', flush=True)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    # A killed process not yet reaped is a zombie: gone for our purposes.
    return state != "Z"


def gone(pid: int) -> bool:
    """The process is gone within a few seconds (a signal takes effect when it is scheduled)."""
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def child_pid(service: Service) -> int:
    line = next(line for line in service.log().splitlines() if line.startswith("child "))
    return int(line.split()[1])


def test_a_killed_service_takes_its_children_with_it_and_restarts(tmp_path: Path) -> None:
    service = Service(
        name="parent",
        args=[sys.executable, "-c", PARENT_WITH_CHILD],
        env=dict(os.environ),
        log_path=tmp_path / "parent.log",
        ready=lambda s: "ready" in s.log(),
        ready_timeout=30,
    )
    service.start()
    first_child = child_pid(service)
    assert alive(first_child)

    service.kill()
    assert not service.running
    assert gone(first_child)

    service.start()  # readiness reads only this run's lines of the same log file
    second_child = child_pid(service)
    assert second_child != first_child
    assert service.log().count("ready") == 1
    service.stop()
    assert gone(second_child)


def test_the_oauth_stand_in_issues_the_token_only_to_the_client_with_the_pkce_verifier() -> None:
    provider = OAuthProviderStandIn(access_token="calendar-token").start()
    try:
        verifier = "v" * 50
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        redirect = "http://127.0.0.1:1/api/v1/tools/callback"

        def consent() -> str:
            back = httpx.get(
                f"{provider.url}/authorize",
                params={
                    "redirect_uri": redirect,
                    "state": "s1",
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                    "scope": "calendar",
                },
            )
            assert back.status_code == 302
            query = parse_qs(urlsplit(back.headers["location"]).query)
            assert query["state"] == ["s1"]
            return query["code"][0]

        def exchange(code: str, secret: str, code_verifier: str) -> httpx.Response:
            return httpx.post(
                f"{provider.url}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect,
                    "client_id": provider.client_id,
                    "client_secret": secret,
                    "code_verifier": code_verifier,
                },
            )

        assert exchange(consent(), "wrong-secret", verifier).status_code == 401
        assert exchange(consent(), provider.client_secret, "w" * 50).json() == {
            "error": "invalid_grant",
            "error_description": "PKCE check failed",
        }
        code = consent()
        token = exchange(code, provider.client_secret, verifier)
        assert token.status_code == 200
        assert token.json()["access_token"] == "calendar-token"
        assert exchange(code, provider.client_secret, verifier).status_code == 400  # single use
    finally:
        provider.stop()
