"""The KV mirror the call path runs on: filled at start, kept current, never goes back in time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

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
