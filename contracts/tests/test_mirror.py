"""The KV mirror the call path runs on: filled at start, kept current, never goes back in time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from voiceagents.contracts import bus
from voiceagents.contracts.agents import (
    AGENT_CONFIG_BUCKET,
    PHONE_NUMBERS_BUCKET,
    AgentRuntimeConfig,
    PhoneNumberEntry,
    phone_number_key,
)
from voiceagents.contracts.calls import CALLS_STREAM
from voiceagents.contracts.codec import encode
from voiceagents.contracts.mirror import ConfigMirror

pytestmark = pytest.mark.integration


def _agent(agent_id: str, version: int, name: str = "Ava") -> AgentRuntimeConfig:
    return AgentRuntimeConfig(
        agent_id=agent_id, org_id="org-1", version=version, name=name, system_prompt="Be brief."
    )


async def _until(mirror: ConfigMirror, condition: Callable[[], bool]) -> None:
    changed = asyncio.Event()
    mirror.on_change(lambda _bucket, _key: changed.set())
    async with asyncio.timeout(5):
        while not condition():
            await changed.wait()
            changed.clear()


async def test_mirror_fills_from_kv_then_follows_changes(nats_ops: NatsClient) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    agents = await js.key_value(AGENT_CONFIG_BUCKET)
    numbers = await js.key_value(PHONE_NUMBERS_BUCKET)
    agent_id = str(uuid.uuid4())
    e164 = f"+1555{uuid.uuid4().int % 10**7:07d}"
    await agents.put(agent_id, encode(_agent(agent_id, 1)))
    await numbers.put(
        phone_number_key(e164),
        encode(PhoneNumberEntry(phone_number=e164, agent_id=agent_id, org_id="org-1", version=1)),
    )

    mirror = ConfigMirror()
    await mirror.start(js)
    try:
        routed = mirror.route(e164)
        assert routed is not None
        assert routed[1].name == "Ava"

        await agents.put(agent_id, encode(_agent(agent_id, 2, name="Ben")))
        await _until(mirror, lambda: getattr(mirror.agent(agent_id), "name", None) == "Ben")

        await numbers.delete(phone_number_key(e164))
        await _until(mirror, lambda: mirror.route(e164) is None)
    finally:
        await mirror.stop()


async def test_mirror_keeps_newer_version_when_older_arrives(nats_ops: NatsClient) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    agents = await js.key_value(AGENT_CONFIG_BUCKET)
    agent_id = str(uuid.uuid4())
    mirror = ConfigMirror()
    await mirror.start(js)
    try:
        await agents.put(agent_id, encode(_agent(agent_id, 5, name="Newer")))
        await _until(mirror, lambda: mirror.agent(agent_id) is not None)
        await agents.put(agent_id, encode(_agent(agent_id, 4, name="Older")))
        marker = str(uuid.uuid4())
        await agents.put(marker, encode(_agent(marker, 1)))
        await _until(mirror, lambda: mirror.agent(marker) is not None)  # the stale put came first
        config = mirror.agent(agent_id)
        assert config is not None
        assert (config.version, config.name) == (5, "Newer")
    finally:
        await mirror.stop()


async def test_ensure_stream_is_idempotent(nats_ops: NatsClient) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_stream(js, CALLS_STREAM)
    await bus.ensure_stream(js, CALLS_STREAM)
    info = await js.stream_info(CALLS_STREAM)
    assert info.config.subjects == ["calls.v1.>"]
    assert info.config.duplicate_window == 3600.0


async def test_an_unreadable_value_is_skipped_and_the_watch_goes_on(
    nats_ops: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    agents = await js.key_value(AGENT_CONFIG_BUCKET)
    numbers = await js.key_value(PHONE_NUMBERS_BUCKET)
    mirror = ConfigMirror()
    await mirror.start(js)
    bad_number = str(uuid.uuid4().int)[:11]
    bad_agent = str(uuid.uuid4())
    try:
        await numbers.put(bad_number, b'{"phone_number": "sk-live-not-json')
        # JSON, but an enum value this version does not know (msgspec would quote it).
        broken = msgspec.to_builtins(_agent(bad_agent, 1))
        broken["tools"] = [{"agent_tool_id": "t", "tool_name": "crm", "auth_type": "sk-live-x"}]
        await agents.put(bad_agent, msgspec.json.encode(broken))
        agent_id = str(uuid.uuid4())
        e164 = f"+1555{uuid.uuid4().int % 10**7:07d}"
        await agents.put(agent_id, encode(_agent(agent_id, 1)))
        await numbers.put(
            phone_number_key(e164),
            encode(
                PhoneNumberEntry(phone_number=e164, agent_id=agent_id, org_id="org-1", version=1)
            ),
        )

        await _until(mirror, lambda: mirror.route(e164) is not None)

        assert mirror.ready.is_set()
        assert mirror.number(bad_number) is None and mirror.agent(bad_agent) is None
        logged = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
        assert any(f"phone-numbers entry for key {bad_number}" in line for line in logged)
        assert any(f"agent-config entry for key {bad_agent}" in line for line in logged)
        assert not any("sk-live" in line for line in caplog.text.splitlines())
    finally:
        await mirror.stop()
        await numbers.delete(bad_number)
        await agents.delete(bad_agent)


async def test_an_unreadable_value_in_the_initial_load_does_not_hold_up_start(
    nats_ops: NatsClient,
) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    numbers = await js.key_value(PHONE_NUMBERS_BUCKET)
    agents = await js.key_value(AGENT_CONFIG_BUCKET)
    bad_number = str(uuid.uuid4().int)[:11]
    await numbers.put(bad_number, b"{not json")
    agent_id = str(uuid.uuid4())
    await agents.put(agent_id, encode(_agent(agent_id, 1)))
    mirror = ConfigMirror()
    try:
        async with asyncio.timeout(10):
            await mirror.start(js)

        assert mirror.ready.is_set()
        assert mirror.agent(agent_id) is not None
    finally:
        await mirror.stop()
        await numbers.delete(bad_number)


async def test_a_watch_stopped_by_an_unexpected_error_is_logged_and_not_ready(
    nats_ops: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    agents = await js.key_value(AGENT_CONFIG_BUCKET)
    poison = str(uuid.uuid4())
    raised = asyncio.Event()

    def listener(_bucket: str, key: str) -> None:
        if key == poison:
            raised.set()  # its waiter runs after the watch task has handled the error
            raise RuntimeError("listener bug")

    mirror = ConfigMirror()
    mirror.on_change(listener)
    await mirror.start(js)
    try:
        await agents.put(poison, encode(_agent(poison, 1)))
        async with asyncio.timeout(5):
            await raised.wait()

        assert not mirror.ready.is_set()
        assert "kv watch of agent-config stopped" in caplog.text
    finally:
        await mirror.stop()
        await agents.delete(poison)


async def test_start_fails_when_a_watch_stops_during_the_initial_load(
    nats_ops: NatsClient,
) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    agents = await js.key_value(AGENT_CONFIG_BUCKET)
    poison = str(uuid.uuid4())
    await agents.put(poison, encode(_agent(poison, 1)))

    def listener(_bucket: str, key: str) -> None:
        if key == poison:
            raise RuntimeError("listener bug")

    mirror = ConfigMirror()
    mirror.on_change(listener)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(RuntimeError, match="stopped before the initial values"):
                await mirror.start(js)
        assert not mirror.ready.is_set()
    finally:
        await agents.delete(poison)
