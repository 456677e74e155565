"""Knowledge base: how long a voice worker waits for `search_knowledge_base` passages.

One registry *process* (`python -m voiceagents.registry serve`) on a real PostgreSQL and NATS.
The organization searched holds 1,000 Markdown articles of 10 sections each, cut by the
registry into 10,000 passages (uploaded through the REST API); a second organization holds as
many, so the index is shared as it is in production. Text and questions are drawn from one
Zipf-distributed vocabulary (common words are common in both, so some questions match
thousands of passages).

Each sample is what the tool waits for: a `registry.v1.kb.search` request as the `worker` NATS
user, with a call grant for an agent that has the knowledge base bound -> registry (grant
verified, binding and call looked up) -> PostgreSQL full-text search -> reply, for the top 3
passages. 1,000 questions one after another (after 100 warm-up questions), then the same 1,000
from 8 concurrent callers.

Run: `make bench-kb` (or `.venv/bin/python bench/bench_kb.py`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import nats
from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_registry import admin_key, wait_ready
from bench.report import percentile, write_results
from voiceagents.contracts.calls import CallContext, room_name
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
from voiceagents.devstack.servers import NatsServer, PostgresServer, free_port
from voiceagents.gateway.grants import GrantSigner, generate_key_pair
from voiceagents.registry import db

ARTICLES = 1000
SECTIONS = 10
QUESTIONS = 1000
WARM_UP = 100
CONCURRENT_CALLERS = 8
UPLOADERS = 16

_TOPIC_TEXT = """
order delivery shipping refund return warranty invoice payment card account password login
subscription plan upgrade cancel replacement repair battery charger screen blender kettle
router modem signal outage appointment booking reschedule receipt discount coupon loyalty
points store opening hours address parcel tracking courier damaged missing exchange size
colour price tax bill charge fee contract installation technician visit manual reset
"""
_TOPIC_WORDS = _TOPIC_TEXT.split()
_STOP_TEXT = """
the of and to a in is you that it for on are with as be this your at or by from not can we
have an will if our all do but which when so what there their they them
"""
_STOP_WORDS = _STOP_TEXT.split()
_SYLLABLE_TEXT = "ka lo mi ne ru sa ti vo pe da fi go hu ja ke li mo nu po ra se to ve zi"
_SYLLABLES = _SYLLABLE_TEXT.split()


def _vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    """Function words first (the parser drops them, as in real text), then the topic's words,
    then made-up ones."""
    words = [*_STOP_WORDS, *_TOPIC_WORDS]
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class Text:
    """Words drawn with English-like (Zipf) frequencies: rank r has weight 1 / r."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = _vocabulary(self.rng)
        weights = (1 / rank for rank in range(1, len(self.words) + 1))
        self.cum_weights = list(itertools.accumulate(weights))

    def words_of(self, count: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum_weights, k=count)

    def sentence(self) -> str:
        return " ".join(self.words_of(self.rng.randint(10, 22))).capitalize() + "."

    def article(self, number: int) -> tuple[str, str]:
        title = " ".join(self.words_of(3)).capitalize()
        sections = []
        for section in range(SECTIONS):
            paragraph = " ".join(self.sentence() for _ in range(self.rng.randint(2, 3)))
            sections.append(
                f"## {' '.join(self.words_of(2)).capitalize()} {section}\n\n{paragraph}"
            )
        return f"{title} {number}", "\n\n".join(sections)

    def question(self) -> str:
        """A question with 2 to 5 words that search can use (a caller's words are not all
        function words)."""
        count = self.rng.randint(2, 5)
        words: list[str] = []
        while len(words) < count:
            words += [w for w in self.words_of(count) if w not in _STOP_WORDS]
        return "How do I " + " ".join(words[:count]) + "?"


async def _upload(session: aiohttp.ClientSession, base_url: str, org_id: str, seed: int) -> int:
    """ARTICLES articles into one organization; returns how many passages they became."""
    text = Text(seed)
    articles = [text.article(n) for n in range(ARTICLES)]
    passages = 0

    async def uploader(mine: list[tuple[str, str]]) -> None:
        nonlocal passages
        for title, body in mine:
            async with session.post(
                f"{base_url}/api/v1/knowledge/articles",
                json={"organization_id": org_id, "title": title, "body": body},
            ) as response:
                created = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"upload failed: {created}")
                passages += created["passage_count"]

    await asyncio.gather(*(uploader(articles[i::UPLOADERS]) for i in range(UPLOADERS)))
    return passages


async def _kb_call_grant(
    nc: Client, session: aiohttp.ClientSession, base_url: str, org_id: str, signer: GrantSigner
) -> str:
    """The knowledge base in the catalog (as a worker reports it), an agent of `org_id` with
    it bound, and a call grant for that agent, signed as the gateway signs it."""
    kb_tool = PlatformToolSpec(
        name=KB_TOOL_NAME,
        description="Help articles.",
        functions=[ToolFunctionSpec(name="search_knowledge_base", description="Search.")],
    )
    synced = await nc.request(
        CATALOG_SYNC_SUBJECT,
        encode(CatalogSyncRequest(worker_id="bench", tools=[kb_tool])),
        timeout=10,
    )
    if (error := decode(synced.data, CatalogSyncReply).error) is not None:
        raise RuntimeError(f"catalog sync failed: {error}")
    agent = {"organization_id": org_id, "name": "Support", "system_prompt": "Help."}
    async with session.post(f"{base_url}/api/v1/agents", json=agent) as response:
        agent_id = (await response.json())["id"]
    binding = {"agent_id": agent_id, "tool_name": KB_TOOL_NAME}
    async with session.post(f"{base_url}/api/v1/tools/agent", json=binding) as response:
        if response.status != 201:
            raise RuntimeError(f"binding failed: {await response.text()}")
    sid = f"CA{uuid.uuid4().hex}"
    return signer.sign(
        CallContext(
            call_sid=sid,
            room=room_name(sid),
            org_id=org_id,
            agent_id=agent_id,
            agent_version=1,
            from_number="+14155550123",
            to_number="+14155550100",
            started_at=datetime.now(UTC),
        )
    )


async def _search(nc: Client, grant: str, question: str) -> tuple[float, int]:
    started = time.perf_counter()
    msg = await nc.request(
        KB_SEARCH_SUBJECT, encode(KbSearchRequest(grant=grant, query=question)), timeout=5
    )
    elapsed = time.perf_counter() - started
    reply = decode(msg.data, KbSearchReply)
    if reply.error is not None:
        raise RuntimeError(f"search failed: {reply.error}")
    return elapsed, len(reply.passages)


async def main() -> None:
    with PostgresServer() as postgres, NatsServer() as nats_server:
        dsn = postgres.dsn()
        await asyncio.to_thread(db.migrate, dsn)
        key = await admin_key(dsn)
        port = free_port()
        grant_keys = generate_key_pair("bench")
        signer = GrantSigner(
            base64.b64decode(grant_keys["VA_GATEWAY_GRANT_SIGNING_KEY"]), "bench", 3600
        )
        env = {
            **os.environ,
            **nats_server.environment(),
            "VA_REGISTRY_DSN": dsn,
            "VA_REGISTRY_HOST": "127.0.0.1",
            "VA_REGISTRY_PORT": str(port),
            "VA_REGISTRY_LOG_LEVEL": "warning",
            "VA_REGISTRY_GRANT_PUBLIC_KEYS": grant_keys["VA_REGISTRY_GRANT_PUBLIC_KEYS"],
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voiceagents.registry", "serve", env=env
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            await wait_ready(base_url, process)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
                org_ids = []
                for name in ("Searched", "Neighbour"):
                    async with session.post(
                        f"{base_url}/api/v1/organizations", json={"name": name}
                    ) as response:
                        org_ids.append((await response.json())["id"])
                started = time.perf_counter()
                passages = await _upload(session, base_url, org_ids[0], seed=1)
                await _upload(session, base_url, org_ids[1], seed=2)
                upload_seconds = time.perf_counter() - started
            print(f"uploaded {2 * ARTICLES} articles in {upload_seconds:.1f} s")
            connection = await asyncpg.connect(dsn)
            try:
                await connection.execute("VACUUM ANALYZE kb_passages")
            finally:
                await connection.close()
            worker = await nats.connect(**nats_server.credentials("worker"))
            try:
                async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {key}"}
                ) as session:
                    grant = await _kb_call_grant(worker, session, base_url, org_ids[0], signer)
                questions = Text(seed=3)
                for _ in range(WARM_UP):
                    await _search(worker, grant, questions.question())
                asked = [questions.question() for _ in range(QUESTIONS)]
                sequential = [await _search(worker, grant, q) for q in asked]
                concurrent: list[tuple[float, int]] = []

                async def caller(mine: list[str]) -> None:
                    for question in mine:
                        concurrent.append(await _search(worker, grant, question))

                await asyncio.gather(
                    *(caller(asked[i::CONCURRENT_CALLERS]) for i in range(CONCURRENT_CALLERS))
                )
            finally:
                await worker.close()
        finally:
            process.terminate()
            await process.wait()
    latencies = [elapsed for elapsed, _ in sequential]
    write_results(
        "kb",
        {
            "kb_passages": float(passages),
            "kb_search_p50_ms": percentile(latencies, 50) * 1000,
            "kb_search_p95_ms": percentile(latencies, 95) * 1000,
            "kb_search_p99_ms": percentile(latencies, 99) * 1000,
            "kb_search_p95_ms_8_callers": percentile([e for e, _ in concurrent], 95) * 1000,
            "kb_questions_answered_pct": 100 * sum(1 for _, n in sequential if n) / QUESTIONS,
        },
        {"kb_passages": ">= 10000", "kb_search_p95_ms": "<= 50"},
    )


if __name__ == "__main__":
    asyncio.run(main())
