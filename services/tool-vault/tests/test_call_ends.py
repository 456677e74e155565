"""Ended calls stay ended across tool-vault restarts and lost consumers: revocations are in
memory, so every start replays the call ends of one grant lifetime before answering a release,
and a follower whose consumer disappears makes a new one without missing an end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import nats
import pytest
from litestar import Litestar
from nats.aio.client import Client as NatsClient

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CALL_ENDED_SUBJECT, CALLS_STREAM, CallEnded
from voiceagents.contracts.codec import encode
from voiceagents.devstack.servers import NatsServer
from voiceagents.toolvault.app import ROUTES, ToolVault, start_toolvault, stop_toolvault
from voiceagents.toolvault.call_ends import consumer_prefix
from voiceagents.toolvault.settings import Settings

from .conftest import (
    PUBLIC_BASE_URL,
    Agents,
    Worker,
    binding,
    live_call_with_api_key,
    make_settings,
    put_secrets,
    sign_grant,
    until_revoked,
)

pytestmark = pytest.mark.integration


def call_ended(call_sid: str, agent: AgentRuntimeConfig | None = None) -> bytes:
    return encode(
        CallEnded(
            event_id=uuid.uuid4().hex,
            call_sid=call_sid,
            org_id=agent.org_id if agent else "org-other",
            agent_id=agent.agent_id if agent else "agent-other",
            at=datetime.now(UTC),
            status="completed",
        )
    )


async def connected_tool(
    settings: Settings, nats_ops: NatsClient, registry: NatsClient
) -> tuple[AgentRuntimeConfig, ToolBinding]:
    """An agent with a stored API key, set up through a tool-vault that is stopped again."""
    vault = await start_toolvault(settings)
    try:
        crm = binding("api_key")
        agent = await Agents(nats_ops, vault).create(tools=[crm])
        assert (await put_secrets(registry, agent, crm.agent_tool_id, {"token": "t"})).version
    finally:
        await stop_toolvault(vault)
    return agent, crm


async def test_after_a_restart_under_the_same_instance_id_an_ended_calls_grant_is_refused(
    nats_server: NatsServer,
    embedded_dsn: str,
    nats_ops: NatsClient,
    registry: NatsClient,
    worker: Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A k8s container restart keeps the pod name; compose and devstack use a fixed id.
    settings = make_settings(nats_server, embedded_dsn, instance_id=f"tv-{uuid.uuid4().hex[:8]}")
    agent, crm = await connected_tool(settings, nats_ops, registry)
    call_sid = "CA" + uuid.uuid4().hex
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id, call_sid=call_sid)
    before = await start_toolvault(settings)
    try:
        assert (await worker.request(grant, [crm.agent_tool_id])).error is None
        await nats_ops.jetstream().publish(CALL_ENDED_SUBJECT, call_ended(call_sid, agent))
        await until_revoked(before, call_sid, monkeypatch)
    finally:
        await stop_toolvault(before)

    after = await start_toolvault(settings)
    try:
        reply = await worker.request(grant, [crm.agent_tool_id])
    finally:
        await stop_toolvault(after)

    assert reply.error is not None and reply.error.code == "call_ended"
    assert reply.sealed_credentials is None


@pytest.fixture
def busy_nats() -> Iterator[NatsServer]:
    """A NATS server of the test's own: the thousands of call ends it gets stay out of the
    session's CALLS stream, which other tests (and services) read."""
    with NatsServer() as server:
        yield server


async def test_no_release_is_answered_before_the_ended_calls_are_replayed(
    busy_nats: NatsServer, embedded_dsn: str
) -> None:
    ops = await nats.connect(**busy_nats.credentials("ops"))
    registry = await nats.connect(**busy_nats.credentials("registry"))
    worker = Worker(await nats.connect(**busy_nats.credentials("worker")))
    try:
        agent, crm = await connected_tool(make_settings(busy_nats, embedded_dsn), ops, registry)
        call_sid = "CA" + uuid.uuid4().hex
        grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id, call_sid=call_sid)
        # A busy hour: this call's end comes after thousands of others, so replaying takes many
        # pulls, and a replica that answered before the replay was done would release.
        for _ in range(3000):
            await ops.publish(CALL_ENDED_SUBJECT, call_ended("CA" + uuid.uuid4().hex))
        await ops.jetstream().publish(CALL_ENDED_SUBJECT, call_ended(call_sid, agent))

        # A new replica (its own new consumer): the first release it answers is already refused.
        vault = await start_toolvault(make_settings(busy_nats, embedded_dsn))
        try:
            reply = await worker.request(grant, [crm.agent_tool_id])
        finally:
            await stop_toolvault(vault)
    finally:
        for nc in (ops, registry, worker.nats):
            await nc.close()

    assert reply.error is not None and reply.error.code == "call_ended"


async def test_a_deleted_call_end_consumer_is_replaced_without_missing_an_end(
    agents: Agents,
    worker: Worker,
    registry: NatsClient,
    nats_ops: NatsClient,
    toolvault: ToolVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = await live_call_with_api_key(agents, registry)
    agent, crm, call_sid, grant = call.agent, call.crm, call.call_sid, call.grant
    js = nats_ops.jetstream()
    prefix = consumer_prefix(toolvault.settings.instance_id)
    mine = [c.name for c in await js.consumers_info(CALLS_STREAM) if c.name.startswith(prefix)]
    assert mine

    for name in mine:
        await js.delete_consumer(CALLS_STREAM, name)
    await js.publish(CALL_ENDED_SUBJECT, call_ended(call_sid, agent))
    await until_revoked(toolvault, call_sid, monkeypatch)
    reply = await worker.request(grant, [crm.agent_tool_id])

    assert reply.error is not None and reply.error.code == "call_ended"
    now = [c.name for c in await js.consumers_info(CALLS_STREAM) if c.name.startswith(prefix)]
    assert now and not set(now) & set(mine)


async def test_while_call_ends_are_not_current_releases_are_refused_and_it_is_not_ready(
    agents: Agents, worker: Worker, registry: NatsClient, toolvault: ToolVault
) -> None:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    await put_secrets(registry, agent, crm.agent_tool_id, {"token": "t"})
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id)
    app = Litestar(route_handlers=ROUTES, openapi_config=None)
    app.state.toolvault = toolvault
    transport = httpx.ASGITransport(app=app)
    # As while a failed follower catches up again on a new consumer.
    await toolvault.call_ends.stop()
    toolvault.revocations.current.clear()

    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_BASE_URL) as http:
        reply = await worker.request(grant, [crm.agent_tool_id])
        ready = await http.get("/readyz")

    assert reply.error is not None and reply.error.code == "unavailable"
    assert reply.sealed_credentials is None
    assert ready.status_code == 503 and ready.json()["call_ends"] is False


async def test_an_unreadable_call_end_is_skipped_and_later_ends_still_revoke(
    agents: Agents,
    worker: Worker,
    registry: NatsClient,
    nats_ops: NatsClient,
    toolvault: ToolVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = await live_call_with_api_key(agents, registry)
    agent, crm, call_sid, grant = call.agent, call.crm, call.call_sid, call.grant
    js = nats_ops.jetstream()

    # Not JSON: it must neither stop the follower nor be read again and again.
    await js.publish(CALL_ENDED_SUBJECT, b"\x00not json")
    await js.publish(CALL_ENDED_SUBJECT, call_ended(call_sid, agent))
    await until_revoked(toolvault, call_sid, monkeypatch)
    reply = await worker.request(grant, [crm.agent_tool_id])

    assert reply.error is not None and reply.error.code == "call_ended"
    assert toolvault.revocations.current.is_set()
