"""The outbox relay: one poison row does not hold up the rows after it, and a relay whose lock
connection is gone stops until it holds the lock again."""

from __future__ import annotations

import asyncpg
import pytest

from voiceagents.registry import outbox
from voiceagents.registry.relay import _RELAY_LOCK

from .conftest import Buckets, RunningRegistry
from .test_bad_input import OPEN_CONFIG_TOOL
from .test_nats_handlers import until
from .test_projection import kv_agent

pytestmark = pytest.mark.integration

_LOCK_HOLDER = """
    SELECT pid FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = $1
"""


async def test_a_row_that_can_never_be_published_is_parked_and_later_rows_go_out(
    registry: RunningRegistry, buckets: Buckets
) -> None:
    created = await registry.request("POST", "/api/v1/tools/platform", json=OPEN_CONFIG_TOOL)
    assert created.status_code == 201, created.text
    org = await registry.org()
    agent = await registry.agent(org)
    bound = await registry.request(
        "POST", "/api/v1/tools/agent", json={"agent_id": agent["id"], "tool_name": "Notes"}
    )
    assert bound.status_code == 201, bound.text
    await registry.settled()
    # A config over NATS' max_payload (as a release without the API's size check could store).
    pool = registry.state.pool
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "UPDATE agent_tools SET config = $2 WHERE id = $1",
            bound.json()["id"],
            {"n": "x" * 1_200_000},
        )
        await connection.execute(
            "UPDATE agents SET version = version + 1 WHERE id = $1", agent["id"]
        )
        poison = await outbox.record(
            connection,
            entity="agent_tool",
            action="updated",
            entity_id=bound.json()["id"],
            actor="tests",
            org_id=org,
            agent_id=agent["id"],
            project_agents=[agent["id"]],
        )
    # Another organization's write, committed after it.
    other = await registry.agent(await registry.org())

    await registry.settled()
    projected = await kv_agent(buckets, other["id"])
    assert projected is not None
    row = await pool.fetchrow(
        "SELECT sent_at, parked_at, park_reason FROM outbox WHERE id = $1", poison
    )
    assert row is not None
    assert row["sent_at"] is None
    assert row["parked_at"] is not None
    assert "MaxPayloadError" in row["park_reason"]
    metrics = (await registry.client.get("/metrics")).text
    assert "registry_outbox_parked_total 1.0" in metrics
    stale = await kv_agent(buckets, agent["id"])
    assert stale is not None
    assert stale.version == 2  # the last config NATS could carry


async def test_a_relay_that_loses_its_lock_connection_stops_until_it_holds_the_lock_again(
    registry: RunningRegistry, buckets: Buckets
) -> None:
    await registry.settled()
    connection = await asyncpg.connect(registry.dsn)
    try:
        holder = await connection.fetchval(_LOCK_HOLDER, _RELAY_LOCK)
        assert holder is not None
        # The lock's session ends (idle timeout, an operator): PostgreSQL releases the lock.
        await connection.fetchval("SELECT pg_terminate_backend($1)", holder)

        async def retaken() -> bool:
            return await connection.fetchval(_LOCK_HOLDER, _RELAY_LOCK) not in (None, holder)

        # The relay takes the lock again on a new session, and relays from there.
        await until(retaken)
        again = await connection.fetchval(_LOCK_HOLDER, _RELAY_LOCK)
        agent = await registry.agent(await registry.org())
        await registry.settled()
        assert await kv_agent(buckets, agent["id"]) is not None
        assert await connection.fetchval(_LOCK_HOLDER, _RELAY_LOCK) == again
    finally:
        await connection.close()
