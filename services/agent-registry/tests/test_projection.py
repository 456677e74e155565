"""Every write reaches the REGISTRY stream and the KV buckets calls run on."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from voiceagents.contracts.agents import AgentRuntimeConfig, PhoneNumberEntry, phone_number_key
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.registry import REGISTRY_STREAM, RegistryEvent
from voiceagents.registry import projection
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.projection import KvProjector, load_runtime_config

from .conftest import Buckets, RunningRegistry, new_number
from .test_bad_input import HTTP_TOOL

pytestmark = pytest.mark.integration


async def kv_agent(buckets: Buckets, agent_id: str) -> AgentRuntimeConfig | None:
    try:
        entry = await buckets.agents.get(agent_id)
    except KeyNotFoundError:
        return None
    assert entry.value is not None
    return decode(entry.value, AgentRuntimeConfig)


async def kv_number(buckets: Buckets, number: str) -> PhoneNumberEntry | None:
    try:
        entry = await buckets.numbers.get(phone_number_key(number))
    except KeyNotFoundError:
        return None
    assert entry.value is not None
    return decode(entry.value, PhoneNumberEntry)


async def registry_events(nats: NatsClient, entity_id: str) -> list[tuple[str, RegistryEvent]]:
    """Every event about `entity_id` in the REGISTRY stream, with its Nats-Msg-Id, in order."""
    js = nats.jetstream()
    info = await js.stream_info(REGISTRY_STREAM)
    subscription = await js.pull_subscribe(
        "registry.v1.events.>",
        stream=REGISTRY_STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
    )
    found = []
    remaining = info.state.messages
    while remaining > 0:
        messages = await subscription.fetch(min(remaining, 256), timeout=5)
        remaining -= len(messages)
        for message in messages:
            event = decode(message.data, RegistryEvent)
            if event.entity_id == entity_id or event.agent_id == entity_id:
                assert message.headers is not None
                found.append((message.headers["Nats-Msg-Id"], event))
            await message.ack()
    await subscription.unsubscribe()
    return found


async def test_a_new_agent_is_projected_and_announced(
    registry: RunningRegistry, buckets: Buckets, nats_ops: NatsClient
) -> None:
    org = await registry.org()
    number = new_number()
    agent = await registry.agent(org, phone_number=number, name="Ava", voice="Kore")
    await registry.settled()

    config = await kv_agent(buckets, agent["id"])
    assert config is not None
    assert (config.name, config.voice, config.version, config.org_id) == ("Ava", "Kore", 1, org)
    assert config.greeting_text() == "Hello, this is Ava. How can I help you today?"
    entry = await kv_number(buckets, number)
    assert entry is not None
    assert (entry.agent_id, entry.org_id) == (agent["id"], org)

    events = await registry_events(nats_ops, agent["id"])
    assert [(e.entity, e.action, e.version) for _, e in events] == [("agent", "created", 1)]
    msg_id, event = events[0]
    assert msg_id == event.event_id


async def test_only_enabled_functions_of_active_tools_reach_the_runtime_config(
    registry: RunningRegistry, buckets: Buckets
) -> None:
    assert (
        await registry.request("POST", "/api/v1/tools/platform", json=HTTP_TOOL)
    ).status_code == 201
    org = await registry.org()
    agent = await registry.agent(org)
    created = await registry.request(
        "POST",
        "/api/v1/tools/agent",
        json={
            "agent_id": agent["id"],
            "tool_name": "OrderLookup",
            "config": {"shop_domain": "acme.example"},
            "unselected_functions": ["cancel_order"],
        },
    )
    assert created.status_code == 201, created.text
    binding = created.json()
    assert binding["auth_status"] == "not_required"
    await registry.settled()
    config = await kv_agent(buckets, agent["id"])
    assert config is not None
    assert config.version == 2  # binding a tool changes the runtime config
    assert [(t.tool_name, [f.name for f in t.functions]) for t in config.tools] == [
        ("OrderLookup", ["get_order"])
    ]
    assert config.tools[0].config == {"shop_domain": "acme.example"}
    assert config.tools[0].functions[0].http is not None

    off = await registry.request(
        "PUT", f"/api/v1/tools/agent/{binding['id']}", json={"is_active": False}
    )
    assert off.status_code == 200
    await registry.settled()
    config = await kv_agent(buckets, agent["id"])
    assert config is not None
    assert config.tools == []

    listed = await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}")
    assert [t["is_active"] for t in listed.json()] == [False]
    deleted = await registry.request("DELETE", f"/api/v1/tools/agent/{binding['id']}")
    assert deleted.status_code == 204
    assert (await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}")).json() == []


async def test_a_changed_http_tool_reaches_every_bound_agent_and_a_bound_one_is_not_deleted(
    registry: RunningRegistry, buckets: Buckets
) -> None:
    tool = {**HTTP_TOOL, "name": "Inventory"}
    assert (await registry.request("POST", "/api/v1/tools/platform", json=tool)).status_code == 201
    org = await registry.org()
    agent = await registry.agent(org)
    binding = await registry.request(
        "POST",
        "/api/v1/tools/agent",
        json={"agent_id": agent["id"], "tool_name": "Inventory", "config": {"shop_domain": "a.b"}},
    )
    assert binding.status_code == 201, binding.text
    path = "/api/v1/tools/platform/Inventory"

    renamed = [
        {**tool["functions"][0], "url_template": "https://{config.shop_domain}/v2/{order_number}"}
    ]
    changed = await registry.request("PUT", path, json={**tool, "functions": renamed})
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    await registry.settled()
    config = await kv_agent(buckets, agent["id"])
    assert config is not None
    assert [f.name for f in config.tools[0].functions] == ["get_order"]
    assert config.tools[0].functions[0].http is not None
    assert "/v2/" in config.tools[0].functions[0].http.url_template

    # A schema the existing binding's config breaks is refused, naming the binding.
    strict = {**tool, "config_schema": {**tool["config_schema"], "required": ["api_region"]}}
    refused = await registry.request("PUT", path, json=strict)
    assert refused.status_code == 409
    assert binding.json()["id"] in refused.json()["detail"]
    org_key = await registry.org_key(org)
    assert (await registry.request("PUT", path, key=org_key, json=tool)).status_code == 403
    assert (await registry.request("DELETE", path, key=org_key)).status_code == 403

    assert (await registry.request("DELETE", path)).status_code == 409  # still bound
    unbound = await registry.request("DELETE", f"/api/v1/tools/agent/{binding.json()['id']}")
    assert unbound.status_code == 204
    assert (await registry.request("DELETE", path)).status_code == 204
    catalog = await registry.request("GET", "/api/v1/tools/platform")
    assert "Inventory" not in {t["name"] for t in catalog.json()}
    assert (await registry.request("DELETE", path)).status_code == 404


async def test_a_moved_number_leaves_its_old_key_and_follows_the_agent(
    registry: RunningRegistry, buckets: Buckets
) -> None:
    org = await registry.org()
    old, new = new_number(), new_number()
    agent = await registry.agent(org, phone_number=old)
    await registry.settled()
    before = await kv_number(buckets, old)
    assert before is not None

    moved = await registry.request(
        "PUT", f"/api/v1/agents/{agent['id']}", json={"phone_number": new}
    )
    assert moved.status_code == 200
    await registry.settled()
    assert await kv_number(buckets, old) is None
    after = await kv_number(buckets, new)
    assert after is not None
    assert after.agent_id == agent["id"]
    assert after.version > before.version

    # The old number goes to another agent: its binding version is higher still.
    other = await registry.agent(org, phone_number=old)
    await registry.settled()
    taken = await kv_number(buckets, old)
    assert taken is not None
    assert taken.agent_id == other["id"]
    assert taken.version > after.version


async def test_inactive_agents_stay_in_kv_and_deleted_ones_leave(
    registry: RunningRegistry, buckets: Buckets
) -> None:
    org = await registry.org()
    number = new_number()
    agent = await registry.agent(org, phone_number=number)
    paused = await registry.request(
        "PUT", f"/api/v1/agents/{agent['id']}", json={"is_active": False}
    )
    assert paused.status_code == 200
    await registry.settled()
    config = await kv_agent(buckets, agent["id"])
    assert config is not None
    assert config.is_active is False
    assert await kv_number(buckets, number) is not None

    assert (await registry.request("DELETE", f"/api/v1/agents/{agent['id']}")).status_code == 204
    await registry.settled()
    assert await kv_agent(buckets, agent["id"]) is None
    assert await kv_number(buckets, number) is None


async def test_rebuilding_kv_restores_it_from_postgresql_and_is_idempotent(
    registry: RunningRegistry, buckets: Buckets, nats_ops: NatsClient
) -> None:
    org = await registry.org()
    number = new_number()
    agent = await registry.agent(org, phone_number=number)
    await registry.settled()
    # Disaster: the keys are lost, and a stray key from nowhere appears.
    await buckets.agents.delete(agent["id"])
    await buckets.numbers.delete(phone_number_key(number))
    stray = AgentRuntimeConfig(
        agent_id="00000000-0000-4000-8000-000000000000",
        org_id=org,
        version=1,
        name="ghost",
        system_prompt="-",
    )
    await buckets.agents.put(stray.agent_id, encode(stray))

    projector = await KvProjector.open(nats_ops.jetstream(), RegistryMetrics())
    for _ in range(2):
        await projector.rebuild(registry.state.pool)
        config = await kv_agent(buckets, agent["id"])
        assert config is not None
        assert config.version == agent["version"]
        entry = await kv_number(buckets, number)
        assert entry is not None
        assert entry.agent_id == agent["id"]
        assert await kv_agent(buckets, stray.agent_id) is None


async def test_an_org_admin_sees_only_its_organizations(registry: RunningRegistry) -> None:
    mine, _theirs = await registry.org(), await registry.org()
    key = await registry.org_key(mine)
    listed = await registry.request("GET", "/api/v1/organizations", key=key)
    assert [org["id"] for org in listed.json()] == [mine]
    everyone: Any = await registry.request("GET", "/api/v1/organizations")
    assert len(everyone.json()) == 2


async def test_rebuilding_kv_during_writes_keeps_new_agents_and_deleted_ones_stay_deleted(
    registry: RunningRegistry, buckets: Buckets
) -> None:
    org = await registry.org()
    existing = await registry.agent(org, phone_number=new_number())
    doomed = await registry.agent(org, phone_number=new_number())
    await registry.settled()
    assert registry.state.nats is not None
    projector = await KvProjector.open(registry.state.nats.jetstream(), RegistryMetrics())
    created: list[dict[str, Any]] = []
    original = load_runtime_config

    async def racing(connection: Any, agent_id: str) -> Any:
        """Rebuild's read of PostgreSQL, with the relay's writes landing right after it."""
        loaded = await original(connection, agent_id)
        if agent_id == doomed["id"] and not created:
            # An agent created after rebuild's snapshot, and one deleted after rebuild read it.
            created.append(await registry.agent(org, phone_number=new_number()))
            deleted = await registry.request("DELETE", f"/api/v1/agents/{doomed['id']}")
            assert deleted.status_code == 204
            await registry.settled()
            assert await kv_agent(buckets, doomed["id"]) is None
        return loaded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(projection, "load_runtime_config", racing)
        await projector.rebuild(registry.state.pool)

    [new] = created
    assert await kv_agent(buckets, doomed["id"]) is None
    assert await kv_number(buckets, doomed["phone_number"]) is None
    assert await kv_agent(buckets, new["id"]) is not None
    assert await kv_number(buckets, new["phone_number"]) is not None
    assert await kv_agent(buckets, existing["id"]) is not None
