"""Code tools are found on their own and reported to the registry, which may be down."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.tools import (
    CATALOG_SYNC_SUBJECT,
    CatalogSyncReply,
    CatalogSyncRequest,
)
from voiceagents.devstack.servers import NatsServer
from voiceagents.worker.catalog import sync_catalog
from voiceagents.worker.tools.discovery import catalog, discover


@pytest.mark.unit
def test_builtin_tools_are_discovered_and_described_as_the_model_sees_them() -> None:
    tools = discover()

    assert "clock" in tools
    (clock,) = [spec for spec in catalog(tools) if spec.name == "clock"]
    functions = {f.name: f for f in clock.functions}
    assert sorted(functions) == ["current_date", "current_time"]
    current_time = functions["current_time"]
    assert current_time.description == "The current local time, spoken as hours and minutes."
    assert current_time.idempotent is True
    assert current_time.parameters["properties"]["timezone"]["anyOf"] == [
        {"type": "string"},
        {"type": "null"},
    ]
    assert "required" not in current_time.parameters or current_time.parameters["required"] == []
    assert clock.config_schema["properties"]["timezone"]["type"] == "string"


@pytest.mark.integration
async def test_the_catalog_reaches_the_registry_once_it_comes_up(
    nats_server: NatsServer, worker_nats: Client
) -> None:
    received: list[CatalogSyncRequest] = []
    tools = catalog(discover())

    sync = asyncio.create_task(sync_catalog(worker_nats, "worker-1", tools, request_timeout=0.2))
    await asyncio.sleep(0.3)  # the registry is not up yet: the worker keeps trying
    assert not sync.done()

    registry = await nats.connect(**nats_server.credentials("registry"))

    async def answer(msg: Any) -> None:
        request = decode(msg.data, CatalogSyncRequest)
        received.append(request)
        await msg.respond(encode(CatalogSyncReply(upserted=[t.name for t in request.tools])))

    subscription = await registry.subscribe(CATALOG_SYNC_SUBJECT, cb=answer)
    try:
        reply = await asyncio.wait_for(sync, 30)
    finally:
        await subscription.unsubscribe()
        await registry.close()

    assert "clock" in reply.upserted
    assert received[-1].worker_id == "worker-1"
    assert [t.name for t in received[-1].tools] == [t.name for t in tools]
