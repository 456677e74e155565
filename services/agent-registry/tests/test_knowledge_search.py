"""Knowledge-base search as voice workers ask for it (`registry.v1.kb.search`, as the `worker`
NATS user, with the call's grant): the best short passages of the grant's organization only, of
the collections its agent's binding names only, nothing for a grant that does not verify, a
call that has ended or an agent without the knowledge base, and a typed error rather than
silence for a request it cannot answer."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from voiceagents.contracts import bus, calls
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.knowledge import (
    KB_SEARCH_SUBJECT,
    KB_TOOL_NAME,
    KbSearchReply,
    KbSearchRequest,
)
from voiceagents.contracts.tools import (
    CATALOG_SYNC_SUBJECT,
    CatalogSyncReply,
    CatalogSyncRequest,
    PlatformToolSpec,
    ToolFunctionSpec,
)
from voiceagents.devstack.servers import NatsServer
from voiceagents.gateway.grants import GrantSigner, generate_key_pair
from voiceagents.registry.passages import MAX_PASSAGE_CHARS

from .conftest import GRANTS, RunningRegistry

pytestmark = pytest.mark.integration

WARRANTY = """# Warranty

Every Acme blender carries a **two-year warranty** from the date of purchase.

## Claims

Keep the receipt. Send a photo of the fault to claims@acme.test and we ship a replacement.
"""
SHIPPING = "Orders ship within two business days.\n\nExpress delivery costs nine dollars."
# The voice worker's knowledge-base tool as its catalog reports it.
KB_TOOL = PlatformToolSpec(
    name=KB_TOOL_NAME,
    description="Answers callers' questions from the organization's help articles.",
    config_schema={
        "type": "object",
        "properties": {
            "collections": {"type": "array", "items": {"type": "string"}},
            "max_passages": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "additionalProperties": False,
    },
    functions=[ToolFunctionSpec(name="search_knowledge_base", description="Search.")],
)


@pytest.fixture
async def calls_stream(nats_ops: NatsClient) -> None:
    """The CALLS stream, there before the registry starts its call-log consumer."""
    await bus.ensure_stream(nats_ops.jetstream(), calls.CALLS_STREAM)


@pytest.fixture
async def worker(registry: RunningRegistry, nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A voice worker's NATS connection, its catalog (with the knowledge base) synced."""
    nc = await nats.connect(**nats_server.credentials("worker"))
    sync = encode(CatalogSyncRequest(worker_id="kb-tests", tools=[KB_TOOL]))
    async with asyncio.timeout(30):  # the registry subscribes once it has reached NATS
        while True:
            try:
                answer = await nc.request(CATALOG_SYNC_SUBJECT, sync, timeout=10)
                break
            except NoRespondersError:
                await asyncio.sleep(0.05)
    reply = decode(answer.data, CatalogSyncReply)
    assert reply.error is None
    yield nc
    await nc.close()


def grant(
    org_id: str, agent_id: str, call_sid: str | None = None, signer: GrantSigner = GRANTS
) -> str:
    """A live call's grant, as the gateway signs it."""
    sid = call_sid or f"CA{uuid.uuid4().hex}"
    return signer.sign(
        calls.CallContext(
            call_sid=sid,
            room=calls.room_name(sid),
            org_id=org_id,
            agent_id=agent_id,
            agent_version=1,
            from_number="+14155550123",
            to_number="+14155550100",
            started_at=datetime.now(UTC),
        )
    )


async def kb_agent(registry: RunningRegistry, org_id: str, **binding: Any) -> str:
    """A new agent of `org_id` with the knowledge base bound (`config`, `is_active`)."""
    agent = await registry.agent(org_id)
    bound = await registry.request(
        "POST",
        "/api/v1/tools/agent",
        json={"agent_id": agent["id"], "tool_name": KB_TOOL_NAME, **binding},
    )
    assert bound.status_code == 201, bound.text
    agent_id: str = agent["id"]
    return agent_id


async def call_grant(registry: RunningRegistry, org_id: str, **binding: Any) -> str:
    return grant(org_id, await kb_agent(registry, org_id, **binding))


async def add(registry: RunningRegistry, org_id: str, title: str, body: str, **fields: Any) -> str:
    response = await registry.request(
        "POST",
        "/api/v1/knowledge/articles",
        json={"organization_id": org_id, "title": title, "body": body, **fields},
    )
    assert response.status_code == 201, response.text
    article_id: str = response.json()["id"]
    return article_id


async def ask(worker: NatsClient, call_grant: str, query: str, **fields: Any) -> KbSearchReply:
    request = KbSearchRequest(grant=call_grant, query=query, **fields)
    reply = await worker.request(KB_SEARCH_SUBJECT, encode(request), timeout=10)
    return decode(reply.data, KbSearchReply)


async def test_a_question_finds_the_passage_that_answers_it(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    org = await registry.org()
    warranty = await add(registry, org, "Blender warranty", WARRANTY)
    await add(registry, org, "Shipping", SHIPPING, format="text")
    live = await call_grant(registry, org)

    reply = await ask(worker, live, "How long is the warranty on my blender?")

    assert reply.error is None
    best = reply.passages[0]
    assert best.article_id == warranty
    assert best.title == "Blender warranty: Warranty"
    # Plain words to be read out: no Markdown left.
    assert best.text == "Every Acme blender carries a two-year warranty from the date of purchase."
    assert all(len(p.text) <= MAX_PASSAGE_CHARS for p in reply.passages)
    shipping = await ask(worker, live, "what does express delivery cost", limit=1)
    # Short paragraphs under one heading share a passage.
    assert [p.text for p in shipping.passages] == [
        "Orders ship within two business days. Express delivery costs nine dollars."
    ]


async def test_passages_holding_every_word_come_before_those_repeating_one(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    org = await registry.org()
    kettles = "Kettle warranty: warranty claims for kettles. Warranty cards come in the box."
    await add(registry, org, "Kettles", kettles, format="text")
    blender = await add(
        registry, org, "Blenders", "A blender comes with a warranty.", format="text"
    )
    live = await call_grant(registry, org)

    reply = await ask(worker, live, "blender warranty")
    nothing_with_both = await ask(worker, live, "kettle blender")

    assert [p.article_id for p in reply.passages] == [blender]
    # No passage holds both words: those holding either one answer.
    assert len(nothing_with_both.passages) == 2


async def test_only_the_grants_organization_is_searched(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    mine, theirs = await registry.org(), await registry.org()
    await add(registry, theirs, "Blender warranty", WARRANTY)
    await add(registry, mine, "Shipping", SHIPPING)
    my_agent = await kb_agent(registry, mine)

    reply = await ask(worker, grant(mine, my_agent), "blender warranty claims receipt", limit=10)
    # A grant naming their organization for my agent: signed, but no such binding there.
    crossed = await ask(worker, grant(theirs, my_agent), "blender warranty")

    assert reply.error is None
    assert reply.passages == []
    assert (crossed.error, crossed.passages) == ("denied", [])


async def test_the_bindings_collections_limit_the_search_and_edits_are_searched_at_once(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    org = await registry.org()
    article = await add(registry, org, "Warranty", WARRANTY, collection="products")
    billing_only = await call_grant(registry, org, config={"collections": ["billing"]})
    products_only = await call_grant(registry, org, config={"collections": ["products"]})
    everything = await call_grant(registry, org)

    assert (await ask(worker, billing_only, "warranty")).passages == []
    assert (await ask(worker, products_only, "warranty")).passages

    changed = await registry.request(
        "PUT", f"/api/v1/knowledge/articles/{article}", json={"body": "Warranty is three years."}
    )
    assert changed.status_code == 200
    [passage] = (await ask(worker, everything, "warranty")).passages
    assert passage.text == "Warranty is three years."
    await registry.request("DELETE", f"/api/v1/knowledge/articles/{article}")
    assert (await ask(worker, everything, "warranty")).passages == []


async def test_a_call_that_may_not_search_is_denied(
    calls_stream: None, registry: RunningRegistry, worker: NatsClient, nats_ops: NatsClient
) -> None:
    org = await registry.org()
    await add(registry, org, "Warranty", WARRANTY)
    with_kb = await kb_agent(registry, org)
    paused_kb = await kb_agent(registry, org, is_active=False)
    without_kb = (await registry.agent(org))["id"]
    ended_sid = f"CA{uuid.uuid4().hex}"
    ended = calls.CallEnded(
        event_id=str(uuid.uuid4()),
        call_sid=ended_sid,
        org_id=org,
        agent_id=with_kb,
        at=datetime.now(UTC),
        status="completed",
    )
    await nats_ops.jetstream().publish(
        calls.CALL_ENDED_SUBJECT, encode(ended), headers={"Nats-Msg-Id": ended.event_id}
    )
    async with asyncio.timeout(30):  # until the call log has it (a guard, not a speed check)
        while (await registry.request("GET", f"/api/v1/calls/{ended_sid}")).status_code != 200:  # noqa: ASYNC110 - polls the REST API
            await asyncio.sleep(0.05)
    other_key = generate_key_pair("tests")["VA_GATEWAY_GRANT_SIGNING_KEY"]
    other_gateway = GrantSigner(base64.b64decode(other_key), "tests", 600)

    denied = {
        "ended call": grant(org, with_kb, ended_sid),
        "knowledge base inactive": grant(org, paused_kb),
        "knowledge base not bound": grant(org, without_kb),
        "not an agent id": grant(org, "agent-1"),
        "signed by another key": grant(org, with_kb, signer=other_gateway),
        "not a grant": "not a grant",
    }
    replies = {why: await ask(worker, token, "warranty") for why, token in denied.items()}

    assert {why: (r.error, r.passages) for why, r in replies.items()} == {
        why: ("denied", []) for why in denied
    }
    assert (await ask(worker, grant(org, with_kb), "warranty")).passages


async def test_questions_without_searchable_words_or_bad_requests_get_an_answer(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    org = await registry.org()
    await add(registry, org, "Warranty", WARRANTY)
    live = await call_grant(registry, org)

    only_stop_words = await ask(worker, live, "what is it and how?")
    odd_characters = await ask(worker, live, "warranty' | !( & <-> \\ :*")
    too_many = await ask(worker, live, "warranty", limit=1000)
    garbage_reply = await worker.request(KB_SEARCH_SUBJECT, b"{", timeout=10)
    garbage = decode(garbage_reply.data, KbSearchReply)
    no_grant_reply = await worker.request(KB_SEARCH_SUBJECT, b'{"query": "warranty"}', timeout=10)
    no_grant = decode(no_grant_reply.data, KbSearchReply)

    assert (only_stop_words.error, only_stop_words.passages) == (None, [])
    assert odd_characters.error is None and odd_characters.passages
    assert too_many.error == garbage.error == no_grant.error == "bad_request"


async def test_only_voice_workers_may_ask(
    registry: RunningRegistry, nats_server: NatsServer
) -> None:
    org = await registry.org()
    await add(registry, org, "Warranty", WARRANTY)
    # NATS refuses the gateway's request before the registry sees it.
    some_grant = grant(org, str(uuid.uuid4()))
    gateway = await nats.connect(**nats_server.credentials("gateway"))
    try:
        with pytest.raises(NatsError):
            await gateway.request(
                KB_SEARCH_SUBJECT,
                encode(KbSearchRequest(grant=some_grant, query="warranty")),
                timeout=2,
            )
    finally:
        await gateway.close()
