"""What happens when processes die and NATS goes away: nothing committed is lost, nothing is
published twice, and KV never goes back to an older version."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
import pytest

from voiceagents.contracts import bus
from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET, AgentRuntimeConfig
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.registry import REGISTRY_STREAM
from voiceagents.devstack.servers import NatsServer, free_port
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.projection import KvProjector

from .conftest import GRANT_KEYS, RunningRegistry, admin_key, new_number
from .test_projection import registry_events

pytestmark = pytest.mark.integration


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    """A NATS server this test may stop and start."""
    with NatsServer() as server:
        yield server


async def _ready(base_url: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        while process.returncode is None:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"registry exited with {process.returncode}")


async def test_a_registry_killed_between_commit_and_publish_loses_and_repeats_nothing(
    migrated_dsn: str, own_nats: NatsServer, start_registry: Any
) -> None:
    key = await admin_key(migrated_dsn)
    port = free_port()
    env = {
        **os.environ,
        **own_nats.environment(),
        "VA_REGISTRY_DSN": migrated_dsn,
        "VA_REGISTRY_HOST": "127.0.0.1",
        "VA_REGISTRY_PORT": str(port),
        "VA_REGISTRY_LOG_LEVEL": "warning",
        "VA_REGISTRY_GRANT_PUBLIC_KEYS": GRANT_KEYS["VA_REGISTRY_GRANT_PUBLIC_KEYS"],
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voiceagents.registry", "serve", env=env, start_new_session=True
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        await _ready(base_url, process)
        # NATS goes away: the write commits, the relay cannot publish it.
        own_nats.pause()
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
            org = (await client.post("/api/v1/organizations", json={"name": "Acme"})).json()["id"]
            number = new_number()
            created = await client.post(
                "/api/v1/agents",
                json={
                    "organization_id": org,
                    "name": "Ava",
                    "system_prompt": "Help.",
                    "phone_number": number,
                },
            )
            assert created.status_code == 201
            agent = created.json()
        # The process dies with the event committed but unpublished.
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    connection = await asyncpg.connect(migrated_dsn)
    try:
        unsent = await connection.fetch("SELECT id::text FROM outbox WHERE sent_at IS NULL")
    finally:
        await connection.close()
    assert len(unsent) == 2  # the organization and the agent

    own_nats.resume()
    # As if a relay had published the agent's event just before the kill: the same Nats-Msg-Id.
    ops = await nats.connect(**own_nats.credentials("ops"))
    try:
        js = ops.jetstream()
        await bus.ensure_stream(js, "REGISTRY")
        connection = await asyncpg.connect(migrated_dsn)
        row = await connection.fetchrow(
            "SELECT id::text, subject, payload FROM outbox WHERE $1 = ANY(agent_ids::text[])",
            agent["id"],
        )
        await connection.close()
        assert row is not None
        await js.publish(row["subject"], bytes(row["payload"]), headers={"Nats-Msg-Id": row["id"]})

        restarted: RunningRegistry = await start_registry(nats=own_nats)
        await restarted.settled()

        events = await registry_events(ops, agent["id"])
        assert [(msg_id, e.action) for msg_id, e in events] == [(row["id"], "created")]
        org_events = await registry_events(ops, org)
        assert [e.entity for _, e in org_events].count("organization") == 1
        kv = await js.key_value(AGENT_CONFIG_BUCKET)
        entry = await kv.get(agent["id"])
        assert entry.value is not None
        config = decode(entry.value, AgentRuntimeConfig)
        assert (config.version, config.name) == (1, "Ava")
    finally:
        await ops.close()


async def test_writes_succeed_while_nats_is_down_and_catch_up_in_order(
    own_nats: NatsServer, start_registry: Any
) -> None:
    registry: RunningRegistry = await start_registry(nats=own_nats)
    org = await registry.org()
    agent = await registry.agent(org, phone_number=new_number())
    await registry.settled()

    own_nats.pause()
    for i in range(2, 7):
        response = await registry.request(
            "PUT", f"/api/v1/agents/{agent['id']}", json={"name": f"name v{i}"}
        )
        assert response.status_code == 200
        assert response.json()["version"] == i
    not_ready = await registry.client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["nats"] is False

    own_nats.resume()
    assert registry.state.relay is not None
    await registry.state.relay.wait_idle(timeout=60)

    ops = await nats.connect(**own_nats.credentials("ops"))
    try:
        events = await registry_events(ops, agent["id"])
        assert [e.version for _, e in events] == [1, 2, 3, 4, 5, 6]
        kv = await ops.jetstream().key_value(AGENT_CONFIG_BUCKET)
        entry = await kv.get(agent["id"])
        assert entry.value is not None
        config = decode(entry.value, AgentRuntimeConfig)
        assert (config.version, config.name) == (6, "name v6")
    finally:
        await ops.close()


async def test_an_older_version_never_replaces_a_newer_one(nats_ops: nats.NATS) -> None:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    kv = await js.key_value(AGENT_CONFIG_BUCKET)
    mirror = ConfigMirror()
    await mirror.start(js)
    changed = asyncio.Event()
    mirror.on_change(lambda _bucket, _key: changed.set())
    try:
        agent_id = f"agent-{os.urandom(6).hex()}"

        def config(version: int) -> AgentRuntimeConfig:
            return AgentRuntimeConfig(
                agent_id=agent_id,
                org_id="org",
                version=version,
                name=f"v{version}",
                system_prompt="-",
            )

        # The registry's own writer refuses to put v3 over v5.
        projector = await KvProjector.open(js, RegistryMetrics())
        await projector.put_agent(config(5))
        await projector.put_agent(config(3))
        entry = await kv.get(agent_id)
        assert entry.value is not None
        assert decode(entry.value, AgentRuntimeConfig).version == 5

        # A mirror fed v3 after v5 (a stale writer bypassing the check) keeps v5.
        while (seen := mirror.agent(agent_id)) is None or seen.version != 5:
            changed.clear()
            await changed.wait()
        await kv.put(agent_id, encode(config(3)))
        # The watch delivers a bucket's entries in order: once the mirror has this later entry
        # of another key, it has handled v3.
        marker = f"{agent_id}-marker"
        await kv.put(marker, encode(msgspec.structs.replace(config(1), agent_id=marker)))
        while mirror.agent(marker) is None:
            changed.clear()
            await changed.wait()
        current = mirror.agent(agent_id)
        assert current is not None
        assert current.version == 5
        await kv.put(agent_id, encode(config(6)))
        while (seen := mirror.agent(agent_id)) is None or seen.version != 6:
            changed.clear()
            await changed.wait()
    finally:
        await mirror.stop()


async def test_a_stream_made_by_someone_else_keeps_the_registry_off_nats_without_leaking(
    own_nats: NatsServer, start_registry: Any
) -> None:
    ops = await nats.connect(**own_nats.credentials("ops"))
    try:
        # REGISTRY made first by someone else, also capturing the API-key secrets' subject.
        tampered = bus.stream_config(REGISTRY_STREAM)
        tampered.subjects = [*(tampered.subjects or []), "toolvault.v1.secrets.put"]
        await ops.jetstream().add_stream(tampered)
        registry: RunningRegistry = await start_registry(nats=own_nats)
        await asyncio.sleep(3.5)  # a few of the registry's one-second retries

        not_ready = await registry.client.get("/readyz")
        connections = await registry_connections(own_nats)
        await ops.jetstream().delete_stream(REGISTRY_STREAM)
        async with asyncio.timeout(30):
            while True:  # the registry makes the stream itself and connects
                if (await registry.client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
    finally:
        await ops.close()

    assert not_ready.status_code == 503 and not_ready.json()["nats"] is False
    # Each retry's connection is closed again, not left open.
    assert connections <= 1


async def registry_connections(server: NatsServer) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.monitor_port}/connz?auth=true")
    return sum(c.get("authorized_user") == "registry" for c in response.json()["connections"])
