"""One whole stack (every server and service a real process) shared by the end-to-end tests; each
test creates its own organization and agent, so tests never see each other's calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from voiceagents.devstack.demo import Admin, DemoAgent, create_demo_agent, write_offline_script
from voiceagents.devstack.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir: Path = tmp_path_factory.mktemp("stack")
    with Stack(
        run_dir=run_dir,
        model="offline",
        offline_script=write_offline_script(run_dir / "offline-script.json"),
        worker_settings={"VA_WORKER_OFFLINE_FIRST_AUDIO_MS": "100"},
    ) as running:
        yield running


@pytest.fixture
def conn(stack: Stack) -> dict[str, Any]:
    return stack.connection()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Admin]:
    async with Admin(stack.registry_url, stack.admin_key) as client:
        yield client


@pytest.fixture
async def agent(admin: Admin, stack: Stack) -> DemoAgent:
    """A new organization's agent with the Google Calendar tool, connected through OAuth."""
    return await create_demo_agent(admin, stack.calendar_url)
