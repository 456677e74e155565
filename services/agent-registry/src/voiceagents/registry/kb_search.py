"""`registry.v1.kb.search`: voice workers ask for the passages that best answer a caller.

PostgreSQL full-text search over `kb_passages` (one GIN index on organization + words). The
question's words are stemmed (English, function words dropped). Passages holding every word
are the answer when there are any: the index intersects the words' lists, so this is cheap
however common each word is. Only when none holds them all do passages holding any of the
words compete (a caller's question often has a word no article uses). `ts_rank` orders them by
how many distinct words they hold and how often, a word in the article's title or section
heading weighing most. Only the requesting call's organization is searched (and, when the
agent's tool names some, only those collections).

Each request is answered in its own task: a subscription's callbacks run one after another,
and one slow query must not hold up the other calls' questions.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.msg import Msg

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.knowledge import KbPassage, KbSearchReply, KbSearchRequest

log = structlog.get_logger("voiceagents.registry.kb_search")

MAX_QUERY_CHARS = 500
MAX_PASSAGES = 10

_SEARCH = """
WITH q AS (
    SELECT plainto_tsquery('english', $2) AS every_word,
           -- plainto_tsquery's text form quotes every lexeme: turning each ' & ' into ' | '
           -- ORs the same words without parsing the question again.
           replace(plainto_tsquery('english', $2)::text, ' & ', ' | ')::tsquery AS any_word
),
every AS (
    SELECT article_id, position, title, text, ts_rank(search, any_word, 1) AS score
    FROM kb_passages, q
    WHERE organization_id = $1::uuid AND search @@ every_word
      AND (cardinality($3::text[]) = 0 OR collection = ANY($3::text[]))
    ORDER BY score DESC, article_id, position
    LIMIT $4
)
SELECT article_id::text, title, text, score FROM every
UNION ALL
(
    SELECT article_id::text, title, text, ts_rank(search, any_word, 1) AS score
    FROM kb_passages, q
    WHERE NOT EXISTS (SELECT FROM every)
      AND organization_id = $1::uuid AND search @@ any_word
      AND (cardinality($3::text[]) = 0 OR collection = ANY($3::text[]))
    ORDER BY score DESC, article_id, position
    LIMIT $4
)
"""


class BadSearch(ValueError):
    """The request cannot be answered as sent."""


def _checked(request: KbSearchRequest) -> KbSearchRequest:
    try:
        uuid.UUID(request.org_id)
    except ValueError:
        raise BadSearch("org_id is not an organization id") from None
    if not 1 <= request.limit <= MAX_PASSAGES:
        raise BadSearch(f"limit must be between 1 and {MAX_PASSAGES}")
    return request


async def search_passages(pool: asyncpg.Pool[Any], request: KbSearchRequest) -> list[KbPassage]:
    rows = await pool.fetch(
        _SEARCH,
        request.org_id,
        request.query[:MAX_QUERY_CHARS],
        request.collections,
        request.limit,
    )
    return [
        KbPassage(
            article_id=row["article_id"],
            title=row["title"],
            text=row["text"],
            score=round(float(row["score"]), 4),
        )
        for row in rows
    ]


class KnowledgeSearchHandler:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool
        self._answering: set[asyncio.Task[None]] = set()

    async def handle(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            request = _checked(decode(msg.data, KbSearchRequest))
        except (msgspec.DecodeError, BadSearch) as exc:
            log.warning("bad knowledge search request", error=str(exc))
            await msg.respond(encode(KbSearchReply(error="bad_request")))
            return
        try:
            passages = await search_passages(self._pool, request)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("knowledge search failed", org_id=request.org_id, error=str(exc))
            await msg.respond(encode(KbSearchReply(error="unavailable")))
            return
        await msg.respond(encode(KbSearchReply(passages=passages)))
