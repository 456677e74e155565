"""The call log API: calls of an organization or agent over a time range, and one call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from litestar import Request, get
from litestar.params import FromPath, FromQuery

from voiceagents.registry.agents import Limit
from voiceagents.registry.auth import Admin
from voiceagents.registry.ids import parse_id
from voiceagents.registry.pagination import decode_cursor, encode_cursor
from voiceagents.registry.problems import Invalid, NotFound
from voiceagents.registry.runtime import registry_of
from voiceagents.registry.schemas import (
    Call,
    CallPage,
    CallSummary,
    ToolInvocation,
    TranscriptLine,
    Transfer,
)

_SUMMARY = """
    call_sid, organization_id, agent_id, from_number, to_number, status, ended_by, started_at,
    ended_at, duration_seconds
"""


def _summary(row: asyncpg.Record) -> CallSummary:
    return CallSummary(**{name: row[name] for name in CallSummary.__struct_fields__})


@get("/api/v1/calls", tags=["calls"])
async def list_calls(
    request: Request[Any, Any, Any],
    admin: Admin,
    organization_id: FromQuery[str | None] = None,
    agent_id: FromQuery[str | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    limit: Limit = 50,
    cursor: FromQuery[str | None] = None,
) -> CallPage:
    """Calls, newest first; filter by organization, agent and start time (`since` inclusive,
    `until` exclusive; UTC unless they carry an offset). An org admin sees its own
    organization's calls only."""
    scope = admin.scope()
    if organization_id is not None:
        organization_id = parse_id(organization_id, "organization", "organization_id")
        admin.check_org(organization_id)
    else:
        organization_id = scope
    if agent_id is not None:
        agent_id = parse_id(agent_id, "agent", "agent_id")
    # A time without an offset is UTC (a mix of both would not even compare).
    since = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until
    if since is not None and until is not None and since >= until:
        raise Invalid("since must be before until", field="since")
    before_at, before_sid = decode_cursor(cursor, uuid_key=False) if cursor else (None, None)
    rows = await registry_of(request).pool.fetch(
        f"""
        SELECT {_SUMMARY} FROM calls
        WHERE ($1::text IS NULL OR organization_id = $1)
          AND ($2::text IS NULL OR agent_id = $2)
          AND ($3::timestamptz IS NULL OR started_at >= $3)
          AND ($4::timestamptz IS NULL OR started_at < $4)
          AND ($5::timestamptz IS NULL OR (started_at, call_sid) < ($5, $6))
        ORDER BY started_at DESC, call_sid DESC
        LIMIT $7
        """,  # noqa: S608 - constant column lists, values are bound
        organization_id,
        agent_id,
        since,
        until,
        before_at,
        before_sid,
        limit + 1,
    )
    items = [_summary(row) for row in rows[:limit]]
    next_cursor = (
        encode_cursor(items[-1].started_at, items[-1].call_sid) if len(rows) > limit else None
    )
    return CallPage(items=items, next_cursor=next_cursor)


@get("/api/v1/calls/{call_sid:str}", tags=["calls"])
async def get_call(request: Request[Any, Any, Any], admin: Admin, call_sid: FromPath[str]) -> Call:
    row = await registry_of(request).pool.fetchrow(
        f"""
        SELECT {_SUMMARY}, room, reason, worker_id, setup_ms, agent_joined_at, transcript,
            tool_invocations, transfers
        FROM calls WHERE call_sid = $1 AND ($2::text IS NULL OR organization_id = $2)
        """,  # noqa: S608 - constant column lists, values are bound
        call_sid,
        admin.scope(),
    )
    if row is None:
        raise NotFound(f"call {call_sid} not found")
    transcript = msgspec.convert(row["transcript"], list[TranscriptLine])
    return Call(
        **{name: row[name] for name in CallSummary.__struct_fields__},
        room=row["room"],
        reason=row["reason"],
        worker_id=row["worker_id"],
        setup_ms=row["setup_ms"],
        agent_joined_at=row["agent_joined_at"],
        transcript=sorted(transcript, key=lambda line: line.at),
        tool_invocations=msgspec.convert(row["tool_invocations"], list[ToolInvocation]),
        transfers=msgspec.convert(row["transfers"], list[Transfer]),
    )
