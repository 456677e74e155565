"""`registry.v1.kb.search`: voice workers ask for the passages that best answer a caller.

PostgreSQL full-text search over `kb_passages` (one GIN index on organization + words). The
question's words are stemmed (English, function words dropped). Passages holding every word
are the answer when there are any: the index intersects the words' lists, so this is cheap
however common each word is. Only when none holds them all do passages holding any of the
words compete (a caller's question often has a word no article uses). `ts_rank` orders them by
how many distinct words they hold and how often, a word in the article's title or section
heading weighing most.

What is searched comes from the request's call grant, never from the worker: the grant must
verify (signature, audience `registry`, expiry), its call must not have ended (the call log),
and its agent must have the knowledge-base tool bound and active; then only the grant's
organization is searched, and only the collections that binding names (all when none).

Each request is answered in its own task: a subscription's callbacks run one after another,
and one slow query must not hold up the other calls' questions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.msg import Msg

from voiceagents.contracts.calls import CallGrantClaims
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.grants import GrantRejected, GrantVerifier
from voiceagents.contracts.knowledge import (
    KB_TOOL_NAME,
    KbPassage,
    KbSearchReply,
    KbSearchRequest,
)

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


# The collections the call's agent may search; no row: the call may not search at all.
_BINDING = """
SELECT ARRAY(
    SELECT jsonb_array_elements_text(coalesce(t.config -> 'collections', '[]'::jsonb))
) AS collections
FROM agent_tools t
JOIN agents a ON a.id = t.agent_id AND a.deleted_at IS NULL AND a.is_active
WHERE t.agent_id = $1::uuid AND t.organization_id = $2::uuid AND t.tool_name = $3
  AND t.is_active
  AND NOT EXISTS (SELECT FROM calls c WHERE c.call_sid = $4 AND c.ended_at IS NOT NULL)
"""


class BadSearch(ValueError):
    """The request cannot be answered as sent."""


class Denied(Exception):
    """The grant's call may not search (ended, or its agent has no active knowledge base)."""


def _checked(request: KbSearchRequest) -> KbSearchRequest:
    if not 1 <= request.limit <= MAX_PASSAGES:
        raise BadSearch(f"limit must be between 1 and {MAX_PASSAGES}")
    return request


async def allowed_collections(pool: asyncpg.Pool[Any], claims: CallGrantClaims) -> list[str]:
    """The collections the grant's call may search (empty: all of its organization's)."""
    try:
        row = await pool.fetchrow(
            _BINDING, claims.agent_id, claims.org_id, KB_TOOL_NAME, claims.call_sid
        )
    except asyncpg.DataError:  # ids in a signed grant that are not uuids: nothing to search
        row = None
    if row is None:
        raise Denied(
            f"call {claims.call_sid} has ended or its agent has no active knowledge-base tool"
        )
    collections: list[str] = row["collections"]
    return collections


async def search_passages(
    pool: asyncpg.Pool[Any], org_id: str, query: str, collections: list[str], limit: int
) -> list[KbPassage]:
    rows = await pool.fetch(
        _SEARCH,
        org_id,
        query[:MAX_QUERY_CHARS],
        collections,
        limit,
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
    def __init__(self, pool: asyncpg.Pool[Any], grants: GrantVerifier) -> None:
        self._pool = pool
        self._grants = grants
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
            claims = self._grants.verify(request.grant)
            collections = await allowed_collections(self._pool, claims)
            passages = await search_passages(
                self._pool, claims.org_id, request.query, collections, request.limit
            )
        except (GrantRejected, Denied) as exc:
            log.warning("knowledge search denied", reason=str(exc))
            await msg.respond(encode(KbSearchReply(error="denied")))
            return
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("knowledge search failed", error=str(exc))
            await msg.respond(encode(KbSearchReply(error="unavailable")))
            return
        await msg.respond(encode(KbSearchReply(passages=passages)))
