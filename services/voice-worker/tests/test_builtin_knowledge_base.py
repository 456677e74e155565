"""The knowledge-base tool on a support call: the caller's question goes to the registry's
search (`registry.v1.kb.search`, with the call's grant) and the answer spoken carries the
article's fact; another organization's articles never reach the caller; without the registry
the caller hears that the knowledge base is unavailable and the call goes on.

The registry is the real one, in-process, on PostgreSQL and the session's NATS (the other end
of the contract: a stand-in would only test itself), with this worker's catalog synced and
the agents made and bound through its REST API; each call's grant is signed as the gateway
signs it. Calls run through the worker (call preparation, discovered tools, wrapping) with the
offline model in text mode."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, DispatchMetadata
from voiceagents.contracts.knowledge import KB_TOOL_NAME
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.devstack.servers import NatsServer
from voiceagents.gateway.grants import GrantSigner, generate_key_pair
from voiceagents.registry import db
from voiceagents.registry.app import create_app
from voiceagents.registry.auth import issue_key
from voiceagents.registry.settings import Settings as RegistrySettings
from voiceagents.worker.call import CallState, WorkerRuntime, new_agent, new_session, prepare_call
from voiceagents.worker.catalog import sync_catalog
from voiceagents.worker.events import CallEvents
from voiceagents.worker.offline_model import (
    OfflineRealtimeModel,
    OfflineScript,
    OfflineVoice,
    ScriptBook,
    ScriptToolCall,
    ScriptTurn,
)
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import PhraseAudio
from voiceagents.worker.tools.builtin.knowledge_base import (
    NOTHING_FOUND,
    UNAVAILABLE,
    KnowledgeBase,
)
from voiceagents.worker.tools.discovery import catalog, discover, function_specs
from voiceagents.worker.tools.print_catalog import catalog_json

pytestmark = pytest.mark.integration

OUR_WARRANTY = """# Blenders

## Warranty

Every Acme blender carries a **two-year warranty** from the date of purchase.
Keep the receipt: we ask for it when you claim.
"""
# Another organization's article on the same subject, and one on a subject only it covers.
THEIR_WARRANTY = "Globex blenders carry a ten-year warranty, no receipt needed."
THEIR_LOYALTY = "Loyalty points double on Tuesdays for Globex members."
GRANT_KEYS = generate_key_pair("tests")
GRANTS = GrantSigner(base64.b64decode(GRANT_KEYS["VA_GATEWAY_GRANT_SIGNING_KEY"]), "tests", 600)


@dataclass
class Registry:
    client: httpx.AsyncClient

    async def org(self) -> str:
        response = await self.client.post(
            "/api/v1/organizations", json={"name": f"org-{uuid.uuid4().hex[:8]}"}
        )
        assert response.status_code == 201, response.text
        org_id: str = response.json()["id"]
        return org_id

    async def article(self, org_id: str, title: str, body: str, **fields: Any) -> None:
        response = await self.client.post(
            "/api/v1/knowledge/articles",
            json={"organization_id": org_id, "title": title, "body": body, **fields},
        )
        assert response.status_code == 201, response.text

    async def support_agent(self, org_id: str, **tool_config: Any) -> AgentRuntimeConfig:
        """A new agent of `org_id` with the knowledge base bound, as the worker sees it."""
        agent = await self.client.post(
            "/api/v1/agents",
            json={"organization_id": org_id, "name": "Ada", "system_prompt": "Be helpful."},
        )
        assert agent.status_code == 201, agent.text
        bound = await self.client.post(
            "/api/v1/tools/agent",
            json={"agent_id": agent.json()["id"], "tool_name": KB_TOOL_NAME, "config": tool_config},
        )
        assert bound.status_code == 201, bound.text
        return support_agent(org_id, agent.json()["id"], bound.json()["id"], **tool_config)


@pytest.fixture
async def registry(
    postgres_dsn: str, nats_server: NatsServer, worker_nats: Client
) -> AsyncIterator[Registry]:
    """The agent registry, serving its REST API in-process and KB search over NATS."""
    await asyncio.to_thread(db.migrate, postgres_dsn)
    connection = await db.connect_one(postgres_dsn)
    try:
        admin = await issue_key(
            connection, role="platform_admin", organization_id=None, name="tests"
        )
    finally:
        await connection.close()
    app = create_app(
        RegistrySettings(
            dsn=postgres_dsn,
            nats_url=nats_server.url,
            nats_password=nats_server.passwords["registry"],
            grant_public_keys=json.loads(GRANT_KEYS["VA_REGISTRY_GRANT_PUBLIC_KEYS"]),
        )
    )
    started, stop = asyncio.Event(), asyncio.Event()

    async def serve() -> None:
        # The lifespan is entered and left in this one task (anyio requires it).
        async with app.lifespan():
            started.set()
            await stop.wait()

    serving = asyncio.create_task(serve())
    await asyncio.wait(
        [serving, asyncio.create_task(started.wait())], return_when="FIRST_COMPLETED"
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://registry.test",
        headers={"Authorization": f"Bearer {admin.key}"},
    ) as client:
        try:
            # As the worker does on start; answered once the registry has reached NATS.
            await sync_catalog(worker_nats, "kb-tests", catalog(discover()))
            yield Registry(client=client)
        finally:
            stop.set()
            await serving


def support_agent(
    org_id: str, agent_id: str, agent_tool_id: str, **tool_config: Any
) -> AgentRuntimeConfig:
    return AgentRuntimeConfig(
        agent_id=agent_id,
        org_id=org_id,
        version=1,
        name="Ada",
        system_prompt="You answer Acme customers' questions from the help articles.",
        tools=[
            ToolBinding(
                agent_tool_id=agent_tool_id,
                tool_name=KB_TOOL_NAME,
                config=tool_config,
                functions=function_specs(KnowledgeBase),
            )
        ],
    )


def ask(keyword: str, query: str) -> ScriptTurn:
    """The model hears `keyword` in the caller's words and searches for `query`."""
    return ScriptTurn(
        when=keyword,
        tool_calls=[ScriptToolCall(name="search_knowledge_base", arguments={"query": query})],
    )


SCRIPT = OfflineScript(
    turns=[
        ask("warranty", "blender warranty"),
        ask("loyalty", "loyalty points"),
        ask("receipt", "receipt claim"),
    ]
)


async def support_call(config: AgentRuntimeConfig, nc: Client | None) -> Any:
    """A call to `config`'s agent through the worker; returns what the agent says to a line."""
    mirror = ConfigMirror()
    mirror.apply_agent(config)
    runtime = WorkerRuntime(
        settings=Settings(dev_mode=True, model="offline"),
        mirror=mirror,
        tool_classes=discover(),
        phrases=PhraseAudio(OfflineVoice(), None),
        scripts=ScriptBook(),
    )
    sid = f"CA{uuid.uuid4().hex}"
    call = CallContext(
        call_sid=sid,
        room=f"call_{sid}",
        org_id=config.org_id,
        agent_id=config.agent_id,
        agent_version=1,
        from_number="+14155550123",
        to_number="+14155550100",
        started_at=datetime.now(UTC),
    )
    state: CallState = await prepare_call(
        runtime,
        DispatchMetadata(call=call, grant=GRANTS.sign(call)),
        nc=nc,
        js=None,
        started=0.0,
        events=CallEvents(None, call),
    )
    session = new_session(OfflineRealtimeModel(script=SCRIPT, realtime=False), state)
    await session.start(new_agent(state))

    async def say(words: str) -> str:
        result = await session.run(user_input=words)
        [spoken] = [
            e.item.text_content
            for e in result.events
            if e.type == "message" and e.item.role == "assistant"
        ]
        return str(spoken)

    return session, say


async def test_a_support_call_answers_from_the_organizations_article(
    registry: Registry, worker_nats: Client
) -> None:
    acme, globex = await registry.org(), await registry.org()
    await registry.article(acme, "Blender care", OUR_WARRANTY)
    await registry.article(globex, "Warranty", THEIR_WARRANTY, format="text")
    await registry.article(globex, "Loyalty", THEIR_LOYALTY, format="text")

    session, say = await support_call(await registry.support_agent(acme), worker_nats)
    try:
        warranty = await say("Hi, how long is the warranty on my blender?")
        loyalty = await say("Do loyalty points double on Tuesdays?")
    finally:
        await session.aclose()

    answer = json.loads(warranty)
    assert answer["found"] is True
    assert "two-year warranty" in answer["passages"][0]["text"]
    assert answer["passages"][0]["title"] == "Blender care: Warranty"
    # Globex's articles are never read to an Acme caller, however well they match.
    for hidden in ("ten-year", "Globex", "Tuesdays"):
        assert hidden not in warranty
        assert hidden not in loyalty
    assert json.loads(loyalty) == {"found": False, "answer": NOTHING_FOUND}


async def test_the_agents_collections_limit_what_it_can_read(
    registry: Registry, worker_nats: Client
) -> None:
    acme = await registry.org()
    await registry.article(acme, "Blender care", OUR_WARRANTY, collection="products")
    await registry.article(acme, "Loyalty", "Loyalty points never expire.", collection="members")

    session, say = await support_call(
        await registry.support_agent(acme, collections=["products"], max_passages=1), worker_nats
    )
    try:
        warranty = json.loads(await say("What about the warranty?"))
        loyalty = json.loads(await say("Do my loyalty points expire?"))
    finally:
        await session.aclose()

    assert len(warranty["passages"]) == 1
    assert "two-year warranty" in warranty["passages"][0]["text"]
    assert loyalty == {"found": False, "answer": NOTHING_FOUND}


@pytest.mark.parametrize("with_nats", [True, False])
async def test_without_the_registry_the_caller_hears_the_knowledge_base_is_unavailable(
    worker_nats: Client, with_nats: bool
) -> None:
    # Nobody answers registry.v1.kb.search on this NATS (no registry started); or no NATS at all.
    agent = support_agent(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()))
    session, say = await support_call(agent, worker_nats if with_nats else None)
    try:
        spoken = await say("Where do I send the receipt for my claim?")
        after = await say("And the warranty?")
    finally:
        await session.aclose()

    assert spoken == after == UNAVAILABLE


def test_the_tool_is_discovered_and_in_the_catalog_with_its_schema() -> None:
    assert discover()["knowledge_base"] is KnowledgeBase
    [listed] = [t for t in json.loads(catalog_json()) if t["name"] == "knowledge_base"]
    assert listed["functions"][0]["parameters"]["properties"]["query"]["type"] == "string"
    assert listed["config_schema"]["properties"]["max_passages"]["maximum"] == 5
    [spec] = function_specs(KnowledgeBase)
    assert spec.name == "search_knowledge_base"
    assert spec.parameters["required"] == ["query"]
    assert spec.idempotent
