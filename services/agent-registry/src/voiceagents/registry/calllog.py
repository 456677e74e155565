"""The call log: a durable consumer of the `CALLS` stream that stores every call.

Events come from the gateway and the worker, in any order and possibly more than once. Each is
applied once (its `event_id` is remembered in the same transaction) and every apply is an
upsert, so a call's row is right whichever event arrives first. Both the gateway and the worker
report a call's end: the gateway's duration (Twilio's, what is billed) wins, and the longest
transcript (the worker's) is kept; a transcript turn already in it (same role, text and time) is
not added again.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.msg import Msg

from voiceagents.contracts import calls
from voiceagents.contracts.codec import decode_union
from voiceagents.registry.consumers import retry_later
from voiceagents.registry.db import Connection
from voiceagents.registry.metrics import RegistryMetrics

log = structlog.get_logger("voiceagents.registry.calllog")

CALL_LOG_DURABLE = "registry-call-log"

_ENSURE_CALL = """
    INSERT INTO calls (call_sid, organization_id, agent_id, started_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (call_sid) DO NOTHING
"""


async def apply_event(connection: Connection, event: calls.CallEvent) -> bool:
    """Apply one event inside the caller's transaction; False if it was applied before."""
    kind = type(event).__struct_config__.tag
    fresh = await connection.fetchval(
        """
        INSERT INTO call_events (event_id, call_sid, kind, at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (event_id) DO NOTHING RETURNING 1
        """,
        event.event_id,
        event.call_sid,
        str(kind),
        event.at,
    )
    if fresh is None:
        return False
    sid = event.call_sid
    await connection.execute(_ENSURE_CALL, sid, event.org_id, event.agent_id, event.at)
    match event:
        case calls.CallStarted():
            await connection.execute(
                """
                UPDATE calls SET room = $2, from_number = $3, to_number = $4,
                    started_at = LEAST(started_at, $5), updated_at = now()
                WHERE call_sid = $1
                """,
                sid,
                event.room,
                event.from_number,
                event.to_number,
                event.at,
            )
        case calls.AgentJoined():
            await connection.execute(
                """
                UPDATE calls SET worker_id = $2, setup_ms = $3, agent_joined_at = $4,
                    updated_at = now()
                WHERE call_sid = $1
                """,
                sid,
                event.worker_id,
                event.setup_ms,
                event.at,
            )
        case calls.ToolInvoked():
            invocation = {
                "tool_name": event.tool_name,
                "function": event.function,
                "arguments": event.arguments,
                "outcome": event.outcome,
                "duration_ms": event.duration_ms,
                "error": event.error,
                "at": event.at,
            }
            await _append(connection, sid, "tool_invocations", invocation)
        case calls.TranscriptTurn():
            # The end event may have brought the whole transcript already (a turn redelivered,
            # or applied by another replica, after it): a line is there once.
            await connection.execute(
                """
                UPDATE calls SET transcript = transcript || jsonb_build_array($2::jsonb),
                    updated_at = now()
                WHERE call_sid = $1 AND NOT transcript @> jsonb_build_array($2::jsonb)
                """,
                sid,
                msgspec.to_builtins(event.entry),
            )
        case calls.CallTransferred():
            transfer = {
                "to_number": event.to_number,
                "reason": event.reason,
                "at": event.at,
                "outcome": event.outcome,
                "error": event.error,
            }
            await _append(connection, sid, "transfers", transfer)
        case calls.CallEnded():
            await connection.execute(
                """
                UPDATE calls SET
                    status = CASE WHEN status = 'in_progress' THEN $2 ELSE status END,
                    ended_by = CASE WHEN $3 <> 'unknown' OR ended_by IS NULL THEN $3
                                    ELSE ended_by END,
                    reason = COALESCE(NULLIF($4, ''), reason),
                    ended_at = COALESCE(ended_at, $5),
                    duration_seconds = CASE
                        WHEN $8::text = 'gateway' AND $6::float8 IS NOT NULL THEN $6::float8
                        ELSE COALESCE(duration_seconds, $6::float8) END,
                    transcript = CASE
                        WHEN jsonb_array_length($7::jsonb) > jsonb_array_length(transcript)
                        THEN $7::jsonb ELSE transcript END,
                    updated_at = now()
                WHERE call_sid = $1
                """,
                sid,
                event.status,
                event.ended_by,
                event.reason,
                event.at,
                event.duration_seconds,
                msgspec.to_builtins(event.transcript),
                event.source,
            )
        case calls.CallFailed():
            await connection.execute(
                """
                UPDATE calls SET status = 'failed', reason = $2,
                    ended_at = COALESCE(ended_at, $3), updated_at = now()
                WHERE call_sid = $1
                """,
                sid,
                event.reason,
                event.at,
            )
    return True


async def _append(connection: Connection, sid: str, column: str, item: dict[str, Any]) -> None:
    await connection.execute(
        f"UPDATE calls SET {column} = {column} || jsonb_build_array($2::jsonb), "  # noqa: S608 - constant column lists, values are bound
        "updated_at = now() WHERE call_sid = $1",
        sid,
        item,
    )


class CallLogConsumer:
    """Handles one message of the CALLS stream: apply, then ack; retry or dead-letter on error
    (consumers.py: a database outage never uses a message up)."""

    def __init__(self, pool: asyncpg.Pool[Any], metrics: RegistryMetrics) -> None:
        self._pool = pool
        self._metrics = metrics

    async def handle(self, msg: Msg) -> None:
        try:
            event = decode_union(msg.data, calls.AnyCallEvent)
        except msgspec.DecodeError as exc:
            # Never readable by this version: stop redelivering; the advisory is dead-lettered.
            self._metrics.call_events.labels("unknown", "rejected").inc()
            log.error("unreadable call event", subject=msg.subject, error=str(exc))
            await msg.term()
            return
        kind = str(type(event).__struct_config__.tag)
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                applied = await apply_event(connection, event)
        # Not stored: retried, or dead-lettered when it is the message's own fault.
        except Exception as exc:
            if await retry_later(msg, exc):
                self._metrics.call_events.labels(kind, "retried").inc()
                log.warning(
                    "call event not stored; will retry", call_sid=event.call_sid, error=str(exc)
                )
            else:
                self._metrics.call_events.labels(kind, "rejected").inc()
                log.error(
                    "call event cannot be stored; dead-lettered",
                    call_sid=event.call_sid,
                    error=str(exc),
                )
            return
        self._metrics.call_events.labels(kind, "applied" if applied else "duplicate").inc()
        await msg.ack()
