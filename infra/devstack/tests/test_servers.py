"""Each local server fixture hands out a real, working server."""

from __future__ import annotations

import asyncpg
import pytest
from livekit import api
from nats.aio.client import Client as NatsClient

from voiceagents.devstack.servers import LiveKitServer

pytestmark = pytest.mark.integration


async def test_postgres_database_answers_queries(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        assert int(version) >= 150000
        await conn.execute("CREATE TABLE notes (id int primary key, body text)")
        await conn.execute("INSERT INTO notes VALUES (1, 'hello')")
        assert await conn.fetchval("SELECT body FROM notes WHERE id = 1") == "hello"
    finally:
        await conn.close()


async def test_nats_jetstream_publishes_and_consumes(nats_ops: NatsClient) -> None:
    js = nats_ops.jetstream()
    await js.add_stream(name="FIXTURE_CHECK", subjects=["fixture.check.>"])
    ack = await js.publish("fixture.check.one", b"payload", headers={"Nats-Msg-Id": "m-1"})
    duplicate = await js.publish("fixture.check.one", b"payload", headers={"Nats-Msg-Id": "m-1"})
    assert duplicate.duplicate and duplicate.seq == ack.seq
    sub = await js.pull_subscribe("fixture.check.>", durable="checker")
    [message] = await sub.fetch(1, timeout=5)
    assert message.data == b"payload"
    await message.ack()
    await js.delete_stream("FIXTURE_CHECK")


async def test_livekit_creates_and_lists_rooms(livekit_server: LiveKitServer) -> None:
    lk = api.LiveKitAPI(livekit_server.url, livekit_server.api_key, livekit_server.api_secret)
    try:
        await lk.room.create_room(api.CreateRoomRequest(name="call_CAfixture", empty_timeout=30))
        rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=["call_CAfixture"]))
        assert [room.name for room in rooms.rooms] == ["call_CAfixture"]
    finally:
        await lk.aclose()
