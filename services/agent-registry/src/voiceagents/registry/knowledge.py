"""Knowledge-base articles: admins upload an organization's help articles (plain text or
Markdown); each write re-cuts the article into passages (passages.py) in the same transaction,
so search (kb_search.py) never sees an article without its passages or the other way round.

Scoping and concurrency are the agents' (agents.py): an org admin sees its own organization
only, anything else is a 404; `PUT` and `DELETE` are conditional on `If-Match` (412) or the
body's `version` (409) when given.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import UNSET, Meta, UnsetType

from voiceagents.registry import outbox
from voiceagents.registry.agents import Limit, check_version, if_match_version
from voiceagents.registry.auth import Admin, Principal
from voiceagents.registry.db import Connection
from voiceagents.registry.ids import parse_id
from voiceagents.registry.pagination import decode_cursor, encode_cursor
from voiceagents.registry.passages import ArticleFormat, split_passages
from voiceagents.registry.problems import Invalid, NotFound
from voiceagents.registry.runtime import registry_of

MAX_BODY_CHARS = 100_000
DEFAULT_COLLECTION = "general"

Title = Annotated[str, Meta(min_length=1, max_length=200)]
Body = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_BODY_CHARS,
        description="The article, plain text or Markdown (see `format`); 100,000 characters max",
    ),
]
Collection = Annotated[
    str,
    Meta(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="Lower-case name grouping articles; an agent's knowledge_base tool may be "
        "limited to some collections",
        examples=["billing"],
    ),
]

_COLUMNS = """
    id::text, organization_id::text, collection, title, format, passage_count, version,
    created_at, updated_at
"""


class ArticleCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    organization_id: str
    title: Title
    body: Body
    format: ArticleFormat = "markdown"
    collection: Collection = DEFAULT_COLLECTION


class ArticleUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields sent change. `version` (or `If-Match`) makes the update conditional."""

    title: Title | UnsetType = UNSET
    body: Body | UnsetType = UNSET
    format: ArticleFormat | UnsetType = UNSET
    collection: Collection | UnsetType = UNSET
    version: Annotated[int, Meta(ge=1)] | UnsetType = UNSET


class ArticleSummary(msgspec.Struct, kw_only=True):
    id: str
    organization_id: str
    collection: str
    title: str
    format: ArticleFormat
    # How many passages search holds for it.
    passage_count: int
    version: int
    created_at: datetime
    updated_at: datetime


class Article(ArticleSummary, kw_only=True):
    body: str


class ArticlePage(msgspec.Struct, kw_only=True):
    items: list[ArticleSummary]
    next_cursor: str | None = None


def _summary(row: asyncpg.Record) -> ArticleSummary:
    return ArticleSummary(**{name: row[name] for name in ArticleSummary.__struct_fields__})


def _article(row: asyncpg.Record) -> Article:
    return Article(**{name: row[name] for name in Article.__struct_fields__})


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


async def _write_passages(
    connection: Connection,
    article_id: str,
    organization_id: str,
    collection: str,
    title: str,
    body: str,
    article_format: ArticleFormat,
) -> int:
    """Replace the article's passages; returns how many there are."""
    passages = split_passages(body, article_format)
    if not passages:
        raise Invalid("body has no text to read out (only code, links or markup)", field="body")
    await connection.execute("DELETE FROM kb_passages WHERE article_id = $1", article_id)
    await connection.execute(
        """
        INSERT INTO kb_passages (article_id, position, organization_id, collection, title, text)
        SELECT $1, position, $2, $3, heading, text
        FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS p (heading, text, position)
        """,
        article_id,
        organization_id,
        collection,
        [
            title if not p.heading or p.heading == title else f"{title}: {p.heading}"
            for p in passages
        ],
        [p.text for p in passages],
    )
    return len(passages)


async def _load_for_update(
    connection: Connection, article_id: str, admin: Principal
) -> asyncpg.Record:
    row: asyncpg.Record | None = await connection.fetchrow(
        f"""
        SELECT {_COLUMNS}, body FROM kb_articles
        WHERE id = $1 AND ($2::uuid IS NULL OR organization_id = $2::uuid)
        FOR UPDATE
        """,  # noqa: S608 - constant column list, values are bound
        article_id,
        admin.scope(),
    )
    if row is None:
        raise NotFound(f"article {article_id} not found")
    return row


@post("/api/v1/knowledge/articles", status_code=HTTP_201_CREATED, tags=["knowledge"])
async def create_article(
    request: Request[Any, Any, Any], admin: Admin, data: JSONBody[ArticleCreate]
) -> Response[Article]:
    """Add an article to an organization's knowledge base; it is searchable once this returns."""
    organization_id = parse_id(data.organization_id, "organization", "organization_id")
    admin.check_org(organization_id)
    article_id = str(uuid.uuid4())
    async with registry_of(request).pool.acquire() as connection, connection.transaction():
        if (
            await connection.fetchval("SELECT 1 FROM organizations WHERE id = $1", organization_id)
            is None
        ):
            raise NotFound(f"organization {organization_id} not found", field="organization_id")
        await connection.execute(
            """
            INSERT INTO kb_articles (id, organization_id, collection, title, format, body,
                passage_count)
            VALUES ($1, $2, $3, $4, $5, $6, 0)
            """,
            article_id,
            organization_id,
            data.collection,
            data.title,
            data.format,
            data.body,
        )
        count = await _write_passages(
            connection,
            article_id,
            organization_id,
            data.collection,
            data.title,
            data.body,
            data.format,
        )
        row = await connection.fetchrow(
            f"UPDATE kb_articles SET passage_count = $2 WHERE id = $1 RETURNING {_COLUMNS}, body",  # noqa: S608 - constant columns
            article_id,
            count,
        )
        assert row is not None
        await outbox.record(
            connection,
            entity="knowledge",
            action="created",
            entity_id=article_id,
            org_id=organization_id,
            version=row["version"],
            actor=admin.key_id,
        )
    return Response(_article(row), headers=_etag(row["version"]))


@get("/api/v1/knowledge/articles/organization/{org_id:str}", tags=["knowledge"])
async def list_articles(
    request: Request[Any, Any, Any],
    admin: Admin,
    org_id: FromPath[str],
    limit: Limit = 50,
    cursor: FromQuery[str | None] = None,
    collection: FromQuery[str | None] = None,
) -> ArticlePage:
    """An organization's articles (without their bodies), oldest first, `limit` per page;
    `collection` keeps one collection only."""
    org_id = parse_id(org_id, "organization")
    admin.check_org(org_id, field=None)
    after_at, after_id = decode_cursor(cursor) if cursor else (None, None)
    rows = await registry_of(request).pool.fetch(
        f"""
        SELECT {_COLUMNS} FROM kb_articles
        WHERE organization_id = $1 AND ($2::text IS NULL OR collection = $2)
          AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))
        ORDER BY created_at, id
        LIMIT $5
        """,  # noqa: S608 - constant column list, values are bound
        org_id,
        collection,
        after_at,
        after_id,
        limit + 1,
    )
    items = [_summary(row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return ArticlePage(items=items, next_cursor=next_cursor)


@get("/api/v1/knowledge/articles/{article_id:str}", tags=["knowledge"])
async def get_article(
    request: Request[Any, Any, Any], admin: Admin, article_id: FromPath[str]
) -> Response[Article]:
    article_id = parse_id(article_id, "article")
    row = await registry_of(request).pool.fetchrow(
        f"""
        SELECT {_COLUMNS}, body FROM kb_articles
        WHERE id = $1 AND ($2::uuid IS NULL OR organization_id = $2::uuid)
        """,  # noqa: S608 - constant column list, values are bound
        article_id,
        admin.scope(),
    )
    if row is None:
        raise NotFound(f"article {article_id} not found")
    return Response(_article(row), headers=_etag(row["version"]))


@put("/api/v1/knowledge/articles/{article_id:str}", tags=["knowledge"])
async def update_article(
    request: Request[Any, Any, Any],
    admin: Admin,
    article_id: FromPath[str],
    data: JSONBody[ArticleUpdate],
) -> Response[Article]:
    """Change the fields sent; the passages are cut again from the new article."""
    article_id = parse_id(article_id, "article")
    if_match = if_match_version(request.headers.get("if-match"))
    async with registry_of(request).pool.acquire() as connection, connection.transaction():
        current = await _load_for_update(connection, article_id, admin)
        check_version(
            current["version"],
            if_match,
            None if data.version is UNSET else data.version,
            what="article",
        )
        title = current["title"] if data.title is UNSET else data.title
        body = current["body"] if data.body is UNSET else data.body
        article_format = current["format"] if data.format is UNSET else data.format
        collection = current["collection"] if data.collection is UNSET else data.collection
        count = await _write_passages(
            connection,
            article_id,
            current["organization_id"],
            collection,
            title,
            body,
            article_format,
        )
        row = await connection.fetchrow(
            f"""
            UPDATE kb_articles SET title = $2, body = $3, format = $4, collection = $5,
                passage_count = $6, version = version + 1, updated_at = now()
            WHERE id = $1
            RETURNING {_COLUMNS}, body
            """,  # noqa: S608 - constant column list, values are bound
            article_id,
            title,
            body,
            article_format,
            collection,
            count,
        )
        assert row is not None
        await outbox.record(
            connection,
            entity="knowledge",
            action="updated",
            entity_id=article_id,
            org_id=row["organization_id"],
            version=row["version"],
            actor=admin.key_id,
        )
    return Response(_article(row), headers=_etag(row["version"]))


@delete(
    "/api/v1/knowledge/articles/{article_id:str}",
    status_code=HTTP_204_NO_CONTENT,
    tags=["knowledge"],
)
async def delete_article(
    request: Request[Any, Any, Any], admin: Admin, article_id: FromPath[str]
) -> None:
    """Delete the article and its passages: search stops finding it at once. Conditional on
    `If-Match` when given."""
    article_id = parse_id(article_id, "article")
    if_match = if_match_version(request.headers.get("if-match"))
    async with registry_of(request).pool.acquire() as connection, connection.transaction():
        current = await _load_for_update(connection, article_id, admin)
        check_version(current["version"], if_match, None, what="article")
        await connection.execute("DELETE FROM kb_articles WHERE id = $1", article_id)
        await outbox.record(
            connection,
            entity="knowledge",
            action="deleted",
            entity_id=article_id,
            org_id=current["organization_id"],
            version=current["version"] + 1,
            actor=admin.key_id,
        )
