"""What other services send the registry over NATS: worker catalogs, call events, tool-vault's
OAuth outcomes; and the OAuth start the registry asks tool-vault for."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from voiceagents.contracts import bus, calls
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.tools import (
    CATALOG_SYNC_SUBJECT,
    CatalogSyncReply,
    CatalogSyncRequest,
    PlatformToolSpec,
    ToolFunctionSpec,
)
from voiceagents.contracts.toolvault import (
    CONNECTED_SUBJECT,
    OAUTH_START_SUBJECT,
    REFRESH_FAILED_SUBJECT,
    SECRETS_PUT_SUBJECT,
    CredentialConnected,
    CredentialRefreshFailed,
    OAuthStartReply,
    OAuthStartRequest,
    SecretsPutReply,
    SecretsPutRequest,
)
from voiceagents.devstack.servers import NatsServer
from voiceagents.registry.calllog import CALL_LOG_DURABLE, apply_event

from .conftest import RunningRegistry
from .test_bad_input import HTTP_TOOL

pytestmark = pytest.mark.integration


@pytest.fixture
async def streams(nats_ops: NatsClient) -> None:
    """The streams the gateway, workers and tool-vault create, there before the registry."""
    js = nats_ops.jetstream()
    await bus.ensure_stream(js, calls.CALLS_STREAM)
    await bus.ensure_stream(js, "TOOLVAULT")


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds (consumers apply events asynchronously); a guard against
    hanging forever, not a speed assertion."""
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")


def code_tool(name: str, description: str = "Calendar.") -> PlatformToolSpec:
    return PlatformToolSpec(
        name=name,
        description=description,
        config_schema={"type": "object", "properties": {"calendar_id": {"type": "string"}}},
        functions=[
            ToolFunctionSpec(name="check_availability", description="Free slots."),
            ToolFunctionSpec(name="book", description="Book a slot."),
        ],
    )


async def test_a_worker_catalog_is_upserted_and_missing_tools_become_unavailable(
    registry: RunningRegistry, nats_server: NatsServer
) -> None:
    worker = await nats.connect(**nats_server.credentials("worker"))
    try:
        await registry.settled()
        first = CatalogSyncRequest(worker_id="w1", tools=[code_tool("Calendar"), code_tool("Crm")])
        reply = decode(
            (await worker.request(CATALOG_SYNC_SUBJECT, encode(first), timeout=10)).data,
            CatalogSyncReply,
        )
        assert sorted(reply.upserted) == ["Calendar", "Crm"]
        assert reply.error is None

        org = await registry.org()
        agent = await registry.agent(org)
        bound = await registry.request(
            "POST",
            "/api/v1/tools/agent",
            json={"agent_id": agent["id"], "tool_name": "Crm", "unselected_functions": ["book"]},
        )
        assert bound.status_code == 201, bound.text

        hang_up = msgspec.structs.replace(code_tool("Hangup"), system=True)
        second = CatalogSyncRequest(
            worker_id="w2", tools=[code_tool("Calendar", "Calendar, now with rooms."), hang_up]
        )
        reply = decode(
            (await worker.request(CATALOG_SYNC_SUBJECT, encode(second), timeout=10)).data,
            CatalogSyncReply,
        )
        assert reply.upserted == ["Calendar", "Hangup"]
        assert reply.marked_unavailable == ["Crm"]
        catalog = {
            tool["name"]: tool
            for tool in (await registry.request("GET", "/api/v1/tools/platform")).json()
        }
        assert catalog["Crm"]["available"] is False
        assert catalog["Calendar"]["description"] == "Calendar, now with rooms."
        assert catalog["Calendar"]["available"] is True
        assert (catalog["Hangup"]["system"], catalog["Calendar"]["system"]) == (True, False)
        # The agent still points at the unavailable tool.
        tools = (await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}")).json()
        assert [t["tool_name"] for t in tools] == ["Crm"]
        # A worker cannot replace a declarative HTTP tool or send broken schemas.
        assert (
            await registry.request("POST", "/api/v1/tools/platform", json=HTTP_TOOL)
        ).status_code == 201
        clash = CatalogSyncRequest(
            worker_id="w3", tools=[code_tool("OrderLookup"), code_tool("Calendar")]
        )
        reply = decode(
            (await worker.request(CATALOG_SYNC_SUBJECT, encode(clash), timeout=10)).data,
            CatalogSyncReply,
        )
        assert reply.error is not None
        assert "OrderLookup" in reply.error
        garbage = await worker.request(CATALOG_SYNC_SUBJECT, b"{not json", timeout=10)
        assert decode(garbage.data, CatalogSyncReply).error
    finally:
        await worker.close()


def _event(cls: Any, sid: str, org: str, agent: str, at: datetime, **fields: Any) -> Any:
    return cls(event_id=uuid.uuid4().hex, call_sid=sid, org_id=org, agent_id=agent, at=at, **fields)


async def test_call_events_become_the_call_log_once_each(
    streams: None, registry: RunningRegistry, nats_server: NatsServer
) -> None:
    org, other_org = await registry.org(), await registry.org()
    agent = await registry.agent(org)
    sid = f"CA{uuid.uuid4().hex}"
    t0 = datetime.now(UTC)
    hello = calls.TranscriptEntry(role="agent", text="Hello, this is Front desk.", at=t0)
    hi = calls.TranscriptEntry(role="caller", text="I need a table.", at=t0 + timedelta(seconds=2))
    started = _event(
        calls.CallStarted,
        sid,
        org,
        agent["id"],
        t0,
        room=f"call_{sid}",
        from_number="+14155550111",
        to_number="+14155550100",
    )
    events = [
        started,
        _event(calls.AgentJoined, sid, org, agent["id"], t0, worker_id="w1", setup_ms=420.0),
        _event(calls.TranscriptTurn, sid, org, agent["id"], t0, entry=hello),
        _event(
            calls.ToolInvoked,
            sid,
            org,
            agent["id"],
            t0 + timedelta(seconds=3),
            tool_name="Calendar",
            function="book",
            arguments={"day": "friday"},
            outcome="ok",
            duration_ms=12.5,
        ),
        _event(
            calls.CallTransferred,
            sid,
            org,
            agent["id"],
            t0 + timedelta(seconds=10),
            to_number="+14155550199",
            reason="wants a person",
            outcome="failed",
            error="TimeoutError",
        ),
        _event(
            calls.CallTransferred,
            sid,
            org,
            agent["id"],
            t0 + timedelta(seconds=20),
            to_number="+14155550199",
            reason="still wants a person",
        ),
        _event(
            calls.CallEnded,
            sid,
            org,
            agent["id"],
            t0 + timedelta(seconds=30),
            status="completed",
            ended_by="caller",
            duration_seconds=30.0,
            transcript=[hello, hi],
            source="worker",
        ),
        _event(
            calls.CallEnded,
            sid,
            org,
            agent["id"],
            t0 + timedelta(seconds=31),
            status="completed",
            duration_seconds=31.0,
        ),
    ]
    gateway = await nats.connect(**nats_server.credentials("gateway"))
    try:
        js = gateway.jetstream()
        # A message no version can read must not block the ones after it.
        await js.publish(calls.CALL_STARTED_SUBJECT, b"\x00 not an event")
        for event in [*events, started]:  # `started` again: delivered twice, applied once
            await js.publish(calls.CALL_EVENT_SUBJECTS[type(event)], encode(event))
    finally:
        await gateway.close()

    async def ended() -> bool:
        response = await registry.request("GET", f"/api/v1/calls/{sid}")
        return response.status_code == 200 and response.json()["ended_at"] is not None

    await until(ended)
    call = (await registry.request("GET", f"/api/v1/calls/{sid}")).json()
    assert call["status"] == "completed"
    assert call["ended_by"] == "caller"
    assert call["duration_seconds"] == 31.0  # Twilio's, through the gateway
    assert call["from_number"] == "+14155550111"
    assert call["worker_id"] == "w1"
    assert [line["text"] for line in call["transcript"]] == [hello.text, hi.text]
    assert [(i["function"], i["outcome"]) for i in call["tool_invocations"]] == [("book", "ok")]
    assert [(t["reason"], t["outcome"], t["error"]) for t in call["transfers"]] == [
        ("wants a person", "failed", "TimeoutError"),
        ("still wants a person", "ok", ""),
    ]

    listed = await registry.request(
        "GET", "/api/v1/calls", params={"agent_id": agent["id"], "since": t0.isoformat()}
    )
    assert [c["call_sid"] for c in listed.json()["items"]] == [sid]
    later = await registry.request(
        "GET",
        "/api/v1/calls",
        params={"agent_id": agent["id"], "since": (t0 + timedelta(minutes=1)).isoformat()},
    )
    assert later.json()["items"] == []
    outsider = await registry.org_key(other_org)
    assert (await registry.request("GET", f"/api/v1/calls/{sid}", key=outsider)).status_code == 404
    assert (await registry.request("GET", "/api/v1/calls", key=outsider)).json()["items"] == []
    own = await registry.org_key(org)
    assert (await registry.request("GET", f"/api/v1/calls/{sid}", key=own)).status_code == 200


OAUTH_TOOL: dict[str, Any] = {
    **HTTP_TOOL,
    "name": "SharedCalendar",
    "auth_type": "oauth2",
    "oauth_provider": "google",
    "functions": [
        {**HTTP_TOOL["functions"][0], "oauth_scopes": ["calendar.readonly"]},
        {**HTTP_TOOL["functions"][1], "oauth_scopes": ["calendar.events"]},
    ],
}


async def test_oauth_starts_through_tool_vault_and_its_events_set_auth_status(
    streams: None, registry: RunningRegistry, nats_server: NatsServer
) -> None:
    assert (
        await registry.request("POST", "/api/v1/tools/platform", json=OAUTH_TOOL)
    ).status_code == 201
    org = await registry.org()
    agent = await registry.agent(org)
    created = await registry.request(
        "POST",
        "/api/v1/tools/agent",
        json={
            "agent_id": agent["id"],
            "tool_name": "SharedCalendar",
            "config": {"shop_domain": "calendar.example"},
            "unselected_functions": ["cancel_order"],
        },
    )
    binding = created.json()
    assert binding["auth_status"] == "disconnected"
    path = f"/api/v1/tools/auth/SharedCalendar?agent_tool_id={binding['id']}"
    await registry.settled()

    # No tool-vault listening: not the admin's mistake, so a 503, not a 5xx crash or a 4xx.
    down = await registry.request("GET", path)
    assert down.status_code == 503
    assert down.headers["content-type"].startswith("application/problem+json")

    toolvault = await nats.connect(**nats_server.credentials("toolvault"))
    asked: list[OAuthStartRequest] = []

    async def answer(msg: Msg) -> None:
        request = decode(msg.data, OAuthStartRequest)
        asked.append(request)
        url = f"https://accounts.example/auth?state=s-{request.agent_tool_id}"
        await msg.respond(encode(OAuthStartReply(authorization_url=url)))

    await toolvault.subscribe(OAUTH_START_SUBJECT, cb=answer)
    try:
        redirect = await registry.request("GET", path)
        assert redirect.status_code == 302
        assert redirect.headers["location"] == (
            f"https://accounts.example/auth?state=s-{binding['id']}"
        )
        assert [(a.org_id, a.agent_id, a.provider, a.scopes) for a in asked] == [
            (org, agent["id"], "google", ["calendar.readonly"])
        ]
        outsider = await registry.org_key(await registry.org())
        assert (await registry.request("GET", path, key=outsider)).status_code == 404

        js = toolvault.jetstream()
        now = datetime.now(UTC)
        connected = CredentialConnected(
            event_id=uuid.uuid4().hex,
            org_id=org,
            agent_tool_id=binding["id"],
            at=now,
            agent_id=agent["id"],
            provider="google",
            scopes=["calendar.readonly"],
        )
        await js.publish(CONNECTED_SUBJECT, encode(connected))

        async def status_is(expected: str) -> bool:
            tools = await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}")
            return bool(tools.json()[0]["auth_status"] == expected)

        await until(lambda: status_is("connected"))
        failed = CredentialRefreshFailed(
            event_id=uuid.uuid4().hex,
            org_id=org,
            agent_tool_id=binding["id"],
            at=now,
            agent_id=agent["id"],
            provider="google",
            reason="invalid_grant",
        )
        await js.publish(REFRESH_FAILED_SUBJECT, encode(failed))
        await until(lambda: status_is("expired"))
        # The safe tier: nothing but status in what admins read.
        body = (await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}")).text
        assert "token" not in body.lower()
    finally:
        await toolvault.close()


API_KEY_TOOL: dict[str, Any] = {**HTTP_TOOL, "name": "KeyedOrders", "auth_type": "api_key"}


async def test_api_key_secrets_go_to_tool_vault_and_never_come_back(
    streams: None,
    registry: RunningRegistry,
    nats_server: NatsServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    for tool in (API_KEY_TOOL, {**OAUTH_TOOL, "name": "OtherCalendar"}):
        created = await registry.request("POST", "/api/v1/tools/platform", json=tool)
        assert created.status_code == 201
    org = await registry.org()
    agent = await registry.agent(org)

    async def bind(tool_name: str) -> str:
        created = await registry.request(
            "POST",
            "/api/v1/tools/agent",
            json={"agent_id": agent["id"], "tool_name": tool_name, "config": {"shop_domain": "x"}},
        )
        binding_id: str = created.json()["id"]
        return binding_id

    keyed, oauth_bound = await bind("KeyedOrders"), await bind("OtherCalendar")
    planted = "sk_live_" + uuid.uuid4().hex
    body = {"tool_name": "KeyedOrders", "secrets": {"api_token": planted}}
    path = f"/api/v1/tools/agent/{keyed}/secrets"

    assert (await registry.request("PUT", path, json=body)).status_code == 503  # no tool-vault

    toolvault = await nats.connect(**nats_server.credentials("toolvault"))
    forwarded: list[SecretsPutRequest] = []

    async def answer(msg: Msg) -> None:
        forwarded.append(decode(msg.data, SecretsPutRequest))
        await msg.respond(encode(SecretsPutReply(version=len(forwarded))))

    await toolvault.subscribe(SECRETS_PUT_SUBJECT, cb=answer)
    try:
        stored = await registry.request("PUT", path, json=body)
        assert stored.status_code == 200, stored.text
        assert stored.json() == {
            "agent_tool_id": keyed,
            "secret_names": ["api_token"],
            "version": 1,
        }
        assert [(f.org_id, f.agent_id, f.agent_tool_id, f.secrets) for f in forwarded] == [
            (org, agent["id"], keyed, {"api_token": planted})
        ]
        # Only API-key tools take secrets; another org's admin does not see the tool at all.
        oauth_body = {**body, "tool_name": "OtherCalendar"}
        refused = await registry.request(
            "PUT", f"/api/v1/tools/agent/{oauth_bound}/secrets", json=oauth_body
        )
        assert (refused.status_code, refused.json()["field"]) == (422, "tool_name")
        empty = await registry.request("PUT", path, json={**body, "secrets": {}})
        assert (empty.status_code, empty.json()["field"]) == (422, "secrets")
        outsider = await registry.org_key(await registry.org())
        assert (await registry.request("PUT", path, key=outsider, json=body)).status_code == 404
        assert len(forwarded) == 1
    finally:
        await toolvault.close()
    logs = "".join(capfd.readouterr())
    assert "tool secrets forwarded" in logs  # the log is there, without the value
    assert planted not in logs
    listed = await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}")
    assert planted not in listed.text
    connection = await asyncpg.connect(registry.dsn)
    try:
        rows = await connection.fetch("SELECT * FROM agent_tools")
        outbox_rows = await connection.fetch("SELECT * FROM outbox")
    finally:
        await connection.close()
    assert planted not in repr(rows) + repr(outbox_rows)


async def test_a_database_outage_longer_than_five_deliveries_loses_no_call_event(
    streams: None, nats_ops: NatsClient, start_registry: Any, nats_server: NatsServer
) -> None:
    js = nats_ops.jetstream()
    # The durable as an older release left it: five deliveries, then JetStream gives up.
    old = ConsumerConfig(
        name=CALL_LOG_DURABLE,
        durable_name=CALL_LOG_DURABLE,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=5,
        ack_wait=30.0,
        filter_subject=calls.CALLS_SUBJECTS,
    )
    await js.add_consumer(calls.CALLS_STREAM, config=old)
    registry: RunningRegistry = await start_registry()

    async def updated() -> bool:
        info = await js.consumer_info(calls.CALLS_STREAM, CALL_LOG_DURABLE)
        return info.config.max_deliver == -1

    await until(updated)
    org = await registry.org()
    agent = await registry.agent(org)
    gateway = await nats.connect(**nats_server.credentials("gateway"))
    server, database = registry.dsn.rsplit("/", 1)
    connection = await asyncpg.connect(f"{server}/postgres")
    try:

        async def publish(sid: str) -> None:
            event = _event(
                calls.CallStarted,
                sid,
                org,
                agent["id"],
                datetime.now(UTC),
                room=f"call_{sid}",
                from_number="+14155550111",
                to_number="+14155550100",
            )
            await gateway.jetstream().publish(calls.CALL_STARTED_SUBJECT, encode(event))

        def stored(sid: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                response = await registry.request("GET", f"/api/v1/calls/{sid}")
                return bool(response.status_code == 200)

            return check

        warm_up = f"CA{uuid.uuid4().hex}"
        await publish(warm_up)
        await until(stored(warm_up))  # the consumer runs

        # PostgreSQL refuses every connection for 8 s: the old config spent an event's five
        # deliveries in about 4 s, then dropped it.
        await connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await connection.execute(
            """
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1
            """,
            database,
        )
        sid = f"CA{uuid.uuid4().hex}"
        await publish(sid)
        await asyncio.sleep(8)
        await connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

        await until(stored(sid))
        metrics = (await registry.client.get("/metrics")).text
        assert 'registry_call_events_total{kind="started",outcome="retried"}' in metrics
    finally:
        await connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await connection.close()
        await gateway.close()


async def test_a_transcript_turn_applied_after_the_end_is_not_repeated(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    agent = await registry.agent(org)
    sid = f"CA{uuid.uuid4().hex}"
    t0 = datetime.now(UTC)
    hello = calls.TranscriptEntry(role="agent", text="Hello", at=t0)
    hi = calls.TranscriptEntry(role="caller", text="Hi", at=t0 + timedelta(seconds=1))
    again = calls.TranscriptEntry(role="caller", text="Hi", at=t0 + timedelta(seconds=3))
    ended = _event(
        calls.CallEnded,
        sid,
        org,
        agent["id"],
        t0 + timedelta(seconds=5),
        status="completed",
        ended_by="caller",
        transcript=[hello, hi],
        source="worker",
    )
    # Stream order is hello, hi, again, ended; `hi` and `again` are applied after the end
    # (redelivered, or on another replica).
    order = [
        _event(calls.TranscriptTurn, sid, org, agent["id"], hello.at, entry=hello),
        ended,
        _event(calls.TranscriptTurn, sid, org, agent["id"], hi.at, entry=hi),
        _event(calls.TranscriptTurn, sid, org, agent["id"], again.at, entry=again),
    ]
    for event in order:
        async with registry.state.pool.acquire() as connection, connection.transaction():
            assert await apply_event(connection, event)
    call = (await registry.request("GET", f"/api/v1/calls/{sid}")).json()
    assert [line["text"] for line in call["transcript"]] == ["Hello", "Hi", "Hi"]
