"""One whole stack (every server and service a real process) shared by the end-to-end tests; each
test creates its own organization and agent, so tests never see each other's calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from voiceagents.devstack.demo import Admin, DemoAgent, create_demo_agent, write_offline_script
from voiceagents.devstack.stack import Stack

# Every call hears the greeting at real-time pace: keep it short.
SHORT_GREETING = "Hi, this is {agent_name}."


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


@pytest.fixture(autouse=True)
def whole_stack_running(stack: Stack) -> None:
    """Every test starts with every service up: a test before it may have stopped or killed one
    (restarted here only when a later test needs it, so the last test's outage costs nothing)."""
    for service in stack.services.values():
        if not service.running:
            service.start()


@pytest.fixture
def conn(stack: Stack) -> dict[str, Any]:
    return stack.connection()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Admin]:
    async with Admin(stack.registry_url, stack.admin_key) as client:
        yield client


@pytest.fixture
def make_agent(admin: Admin, stack: Stack) -> Callable[..., Awaitable[DemoAgent]]:
    """New organization's agent with the Google Calendar tool, connected through OAuth."""

    async def make(calendar_url: str | None = None, active: bool = True) -> DemoAgent:
        return await create_demo_agent(
            admin, calendar_url or stack.calendar_url, active=active, greeting=SHORT_GREETING
        )

    return make


@pytest.fixture
async def agent(make_agent: Callable[..., Awaitable[DemoAgent]]) -> DemoAgent:
    return await make_agent()
