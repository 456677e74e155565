"""Whole phone calls through real PostgreSQL, NATS and LiveKit servers and all four services:
a Twilio-signed webhook, a SIP-kind caller speaking real audio, the offline realtime model, the
Google Calendar stand-in, and the call log in the registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import nats
import pytest

from voiceagents.devstack.demo import (
    BOOKING_LINE,
    CALENDAR_TOOL,
    Admin,
    DemoAgent,
    PhoneCall,
    booking_call,
    random_phone_number,
)
from voiceagents.devstack.stack import Stack

# The first test also waits for the whole stack to start (a minute on a loaded machine).
MakeAgent = Callable[..., Awaitable[DemoAgent]]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def ended(call: dict[str, Any]) -> bool:
    """Ended, and the worker has told how (Twilio's status callback to the gateway cannot)."""
    return call["status"] != "in_progress" and call["ended_by"] not in (None, "unknown")


async def wait_gone(call: PhoneCall, timeout: float = 20.0) -> None:
    """The call's LiveKit room no longer exists (LiveKit has no event for a room we left)."""
    async with asyncio.timeout(timeout):
        while await call.room_exists():  # noqa: ASYNC110 - a remote state, no event to await
            await asyncio.sleep(0.2)


async def wait_for_config_version(conn: dict[str, Any], agent_id: str, version: int) -> None:
    """The agent's runtime config in NATS KV (what gateway and worker read) has `version`."""
    nc = await nats.connect(
        conn["nats_url"],
        user="ops",
        password=conn["nats_ops_password"],
        inbox_prefix="_INBOX_ops",
    )
    try:
        configs = await nc.jetstream().key_value("agent-config")

        async def stored_version() -> int:
            entry = await configs.get(agent_id)
            return int(json.loads(entry.value or b"{}")["version"])

        async with asyncio.timeout(10):
            while await stored_version() < version:  # noqa: ASYNC110 - a remote state
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def test_a_booking_call_greets_by_name_books_in_the_calendar_and_is_logged(
    conn: dict[str, Any], admin: Admin, agent: DemoAgent, stack: Stack
) -> None:
    call_sid = await booking_call(conn, agent.phone_number)

    call = await admin.wait_for_call(call_sid, until=ended)
    assert call["status"] == "completed"
    assert call["ended_by"] == "caller"
    assert call["agent_id"] == agent.agent_id
    first = call["transcript"][0]
    assert first["role"] == "agent"
    assert f"this is {agent.name}" in first["text"]
    [booking] = call["tool_invocations"]
    assert (booking["tool_name"], booking["function"], booking["outcome"]) == (
        CALENDAR_TOOL,
        "create_event",
        "ok",
    )
    # The agent told the caller what the calendar answered, and the slot is in the calendar.
    assert any(
        line["role"] == "agent" and line["text"].startswith("Booked Haircut")
        for line in call["transcript"][1:]
    )
    tomorrow = datetime.now(ZoneInfo("America/New_York")).date() + timedelta(days=1)
    async with httpx.AsyncClient(timeout=10) as client:
        events = await client.get(
            f"{stack.calendar_url}/calendars/primary/events",
            params={
                "timeMin": f"{tomorrow}T00:00:00-12:00",
                "timeMax": f"{tomorrow + timedelta(days=1)}T12:00:00Z",
            },
            headers={"Authorization": f"Bearer {stack.calendar_token}"},
        )
    assert "Haircut" in [event["summary"] for event in events.json()["items"]]


async def test_an_unknown_number_gets_a_polite_goodbye(conn: dict[str, Any]) -> None:
    async with PhoneCall(conn, random_phone_number()) as call:
        answer = await call.dial(routed_within=0)
    assert answer.status_code == 200
    assert answer.sip_uri is None
    assert answer.hangs_up
    [sentence] = answer.spoken
    assert "not in service" in sentence


async def test_an_inactive_agents_number_gets_a_polite_goodbye(
    conn: dict[str, Any], make_agent: MakeAgent
) -> None:
    inactive = await make_agent(active=False)
    async with PhoneCall(conn, inactive.phone_number) as call:
        answer = await call.dial()
    assert answer.sip_uri is None
    assert answer.hangs_up
    [sentence] = answer.spoken
    assert "not taking calls" in sentence


async def test_a_function_unselected_after_a_call_is_absent_from_the_next_call(
    conn: dict[str, Any], admin: Admin, agent: DemoAgent
) -> None:
    async with PhoneCall(conn, agent.phone_number) as first_call:
        await first_call.dial()
        await first_call.join()
        await first_call.say(BOOKING_LINE)
        await first_call.wait_for_event(lambda e: e["kind"] == "tool_invoked")
        await first_call.hang_up()
    first = await admin.wait_for_call(first_call.call_sid, until=ended)
    assert [t["function"] for t in first["tool_invocations"]] == ["create_event"]

    tool = await admin.update_agent_tool(
        agent.agent_id, agent.agent_tool_id, unselected_functions=["create_event"]
    )
    assert tool["unselected_functions"] == ["create_event"]
    configured = await admin.agent(agent.agent_id)
    await wait_for_config_version(conn, agent.agent_id, configured["version"])

    async with PhoneCall(conn, agent.phone_number) as call:
        await call.dial()
        await call.join()
        await call.say(BOOKING_LINE)
        # The scripted model wants create_event as before, but it is not in its tool list.
        reply = await call.wait_for_agent_line(after=1)
        await call.hang_up()
    assert "can't do that" in reply
    assert call.tool_calls() == []
    second = await admin.wait_for_call(call.call_sid, until=ended)
    assert second["tool_invocations"] == []


async def test_a_call_connects_and_greets_while_registry_and_postgres_are_down(
    conn: dict[str, Any], agent: DemoAgent, stack: Stack
) -> None:
    async with PhoneCall(conn, agent.phone_number) as call:
        stack.service("registry").stop()
        assert stack.postgres is not None
        stack.postgres.pause()
        try:
            answer = await call.dial()
            assert answer.sip_uri is not None
            await call.join()
            assert f"this is {agent.name}" in call.agent_lines()[0]
            await call.hang_up()
        finally:
            stack.postgres.resume()
            stack.service("registry").start()
    # The call events waited in the CALLS stream; the registry logs the call once it is back.
    async with Admin(stack.registry_url, stack.admin_key) as admin:
        logged = await admin.wait_for_call(call.call_sid, until=ended, timeout=30)
    assert logged["status"] == "completed"


async def test_with_tool_vault_down_the_agent_says_the_tool_is_unavailable(
    conn: dict[str, Any], admin: Admin, agent: DemoAgent, stack: Stack
) -> None:
    stack.service("toolvault").stop()
    async with PhoneCall(conn, agent.phone_number) as call:
        await call.dial()
        await call.join()
        await call.say(BOOKING_LINE)
        reply = await call.wait_for_agent_line(after=1)
        await call.hang_up()
    assert "isn't available" in reply
    [invocation] = call.tool_calls()
    assert (invocation["function"], invocation["outcome"]) == ("create_event", "unavailable")
    logged = await admin.wait_for_call(call.call_sid, until=ended)
    assert logged["status"] == "completed"


class HangingCalendar:
    """A calendar API that accepts requests and never answers (a slow remote service)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        self.requested.set()
        await reader.read()  # until the tool gives up and closes the connection
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/calendar/v3"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_caller_hanging_up_during_a_tool_call_ends_the_call_and_its_room(
    conn: dict[str, Any], admin: Admin, make_agent: MakeAgent
) -> None:
    hanging = HangingCalendar()
    async with hanging as calendar_url:
        slow = await make_agent(calendar_url)
        async with PhoneCall(conn, slow.phone_number) as call:
            await call.dial()
            await call.join()
            await call.say(BOOKING_LINE)
            async with asyncio.timeout(20):
                await hanging.requested.wait()
            await call.hang_up()
            logged = await admin.wait_for_call(call.call_sid, until=ended)
            assert logged["status"] == "completed"
            assert logged["ended_by"] == "caller"
            await wait_gone(call)


async def test_a_killed_worker_fails_the_call_and_its_room_is_removed(
    conn: dict[str, Any], admin: Admin, agent: DemoAgent, stack: Stack
) -> None:
    async with PhoneCall(conn, agent.phone_number) as call:
        await call.dial()
        await call.join()
        stack.service("worker").kill()
        # The caller stays on the line; the platform must notice the agent is gone.
        logged = await admin.wait_for_call(
            call.call_sid, until=lambda c: c["status"] != "in_progress", timeout=60
        )
        assert logged["status"] == "failed"
        await wait_gone(call, timeout=30)
