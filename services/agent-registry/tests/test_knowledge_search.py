"""Knowledge-base search as voice workers ask for it (`registry.v1.kb.search`, as the `worker`
NATS user): the best short passages of the call's organization only, of the agent's
collections only, and a typed error rather than silence for a request it cannot answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.knowledge import KB_SEARCH_SUBJECT, KbSearchReply, KbSearchRequest
from voiceagents.devstack.servers import NatsServer
from voiceagents.registry.passages import MAX_PASSAGE_CHARS

from .conftest import RunningRegistry

pytestmark = pytest.mark.integration

WARRANTY = """# Warranty

Every Acme blender carries a **two-year warranty** from the date of purchase.

## Claims

Keep the receipt. Send a photo of the fault to claims@acme.test and we ship a replacement.
"""
SHIPPING = "Orders ship within two business days.\n\nExpress delivery costs nine dollars."


@pytest.fixture
async def worker(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(**nats_server.credentials("worker"))
    yield nc
    await nc.close()


async def add(registry: RunningRegistry, org_id: str, title: str, body: str, **fields: Any) -> str:
    response = await registry.request(
        "POST",
        "/api/v1/knowledge/articles",
        json={"organization_id": org_id, "title": title, "body": body, **fields},
    )
    assert response.status_code == 201, response.text
    article_id: str = response.json()["id"]
    return article_id


async def ask(worker: NatsClient, org_id: str, query: str, **fields: Any) -> KbSearchReply:
    request = KbSearchRequest(org_id=org_id, query=query, **fields)
    reply = await worker.request(KB_SEARCH_SUBJECT, encode(request), timeout=10)
    return decode(reply.data, KbSearchReply)


async def test_a_question_finds_the_passage_that_answers_it(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    org = await registry.org()
    warranty = await add(registry, org, "Blender warranty", WARRANTY)
    await add(registry, org, "Shipping", SHIPPING, format="text")

    reply = await ask(worker, org, "How long is the warranty on my blender?")

    assert reply.error is None
    best = reply.passages[0]
    assert best.article_id == warranty
    assert best.title == "Blender warranty: Warranty"
    # Plain words to be read out: no Markdown left.
    assert best.text == "Every Acme blender carries a two-year warranty from the date of purchase."
    assert all(len(p.text) <= MAX_PASSAGE_CHARS for p in reply.passages)
    shipping = await ask(worker, org, "what does express delivery cost", limit=1)
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

    reply = await ask(worker, org, "blender warranty")
    nothing_with_both = await ask(worker, org, "kettle blender")

    assert [p.article_id for p in reply.passages] == [blender]
    # No passage holds both words: those holding either one answer.
    assert len(nothing_with_both.passages) == 2


async def test_another_organizations_articles_are_never_returned(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    mine, theirs = await registry.org(), await registry.org()
    await add(registry, theirs, "Blender warranty", WARRANTY)
    await add(registry, mine, "Shipping", SHIPPING)

    reply = await ask(worker, mine, "blender warranty claims receipt", limit=10)
    unknown_org = await ask(worker, str(uuid.uuid4()), "blender warranty")

    assert reply.error is None
    assert reply.passages == []
    assert unknown_org.passages == []


async def test_collections_limit_the_search_and_edits_are_searched_at_once(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    org = await registry.org()
    article = await add(registry, org, "Warranty", WARRANTY, collection="products")

    assert (await ask(worker, org, "warranty", collections=["billing"])).passages == []
    assert (await ask(worker, org, "warranty", collections=["products"])).passages

    changed = await registry.request(
        "PUT", f"/api/v1/knowledge/articles/{article}", json={"body": "Warranty is three years."}
    )
    assert changed.status_code == 200
    [passage] = (await ask(worker, org, "warranty")).passages
    assert passage.text == "Warranty is three years."
    await registry.request("DELETE", f"/api/v1/knowledge/articles/{article}")
    assert (await ask(worker, org, "warranty")).passages == []


async def test_questions_without_searchable_words_or_bad_requests_get_an_answer(
    registry: RunningRegistry, worker: NatsClient
) -> None:
    org = await registry.org()
    await add(registry, org, "Warranty", WARRANTY)

    only_stop_words = await ask(worker, org, "what is it and how?")
    odd_characters = await ask(worker, org, "warranty' | !( & <-> \\ :*")
    not_an_org = await ask(worker, "org-1", "warranty")
    too_many = await ask(worker, org, "warranty", limit=1000)
    garbage_reply = await worker.request(KB_SEARCH_SUBJECT, b"{", timeout=10)
    garbage = decode(garbage_reply.data, KbSearchReply)

    assert (only_stop_words.error, only_stop_words.passages) == (None, [])
    assert odd_characters.error is None and odd_characters.passages
    assert not_an_org.error == too_many.error == garbage.error == "bad_request"


async def test_only_voice_workers_may_ask(
    registry: RunningRegistry, nats_server: NatsServer
) -> None:
    org = await registry.org()
    await add(registry, org, "Warranty", WARRANTY)
    gateway = await nats.connect(**nats_server.credentials("gateway"))
    try:
        with pytest.raises(NatsError):
            await gateway.request(
                KB_SEARCH_SUBJECT, encode(KbSearchRequest(org_id=org, query="warranty")), timeout=2
            )
    finally:
        await gateway.close()
