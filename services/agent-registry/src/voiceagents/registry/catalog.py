"""`registry.v1.catalog.sync`: voice workers report the code tools they were built with.

Each reported tool is upserted into the platform tool catalog (agents bound to a tool whose
definition changed get a new runtime config). A code tool no longer reported is marked
unavailable, never deleted: agent tools keep pointing at it, and it comes back when a worker
reports it again.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.msg import Msg

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.tools import CatalogSyncReply, CatalogSyncRequest, PlatformToolSpec
from voiceagents.registry import outbox
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.toolspecs import check_code_tool

log = structlog.get_logger("voiceagents.registry.catalog")

_CATALOG_LOCK = 0x7265_6361_7461_6C67


async def sync_catalog(pool: asyncpg.Pool[Any], request: CatalogSyncRequest) -> CatalogSyncReply:
    upserted: list[str] = []
    errors: list[str] = []
    reported: list[PlatformToolSpec] = []
    for spec in request.tools:
        problem = check_code_tool(spec)
        if problem:
            errors.append(problem)
        else:
            reported.append(spec)
    actor = f"worker:{request.worker_id}"
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _CATALOG_LOCK)
        for spec in reported:
            current = await connection.fetchrow(
                "SELECT kind, spec, available, version FROM platform_tools WHERE name = $1 "
                "FOR UPDATE",
                spec.name,
            )
            value = msgspec.to_builtins(spec)
            if current is not None and current["kind"] != "code":
                errors.append(f"{spec.name}: an HTTP tool of that name exists")
                continue
            if current is not None and current["available"] and current["spec"] == value:
                continue
            version = 1 if current is None else current["version"] + 1
            await connection.execute(
                """
                INSERT INTO platform_tools (name, kind, spec) VALUES ($1, 'code', $2)
                ON CONFLICT (name) DO UPDATE SET spec = $2, available = true,
                    version = platform_tools.version + 1, updated_at = now()
                """,
                spec.name,
                value,
            )
            bound = await connection.fetch(
                """
                UPDATE agents SET version = version + 1, updated_at = now()
                WHERE deleted_at IS NULL
                  AND id IN (SELECT agent_id FROM agent_tools WHERE tool_name = $1)
                RETURNING id::text
                """,
                spec.name,
            )
            await outbox.record(
                connection,
                entity="platform_tool",
                action="created" if current is None else "updated",
                entity_id=spec.name,
                version=version,
                actor=actor,
                project_agents=[row["id"] for row in bound],
            )
            upserted.append(spec.name)
        gone = await connection.fetch(
            """
            UPDATE platform_tools SET available = false, version = version + 1, updated_at = now()
            WHERE kind = 'code' AND available AND NOT (name = ANY($1::text[]))
            RETURNING name, version
            """,
            [spec.name for spec in request.tools],
        )
        for row in gone:
            await outbox.record(
                connection,
                entity="platform_tool",
                action="updated",
                entity_id=row["name"],
                version=row["version"],
                actor=actor,
            )
    return CatalogSyncReply(
        upserted=upserted,
        marked_unavailable=[row["name"] for row in gone],
        error="; ".join(errors) or None,
    )


class CatalogSyncHandler:
    def __init__(self, pool: asyncpg.Pool[Any], metrics: RegistryMetrics) -> None:
        self._pool = pool
        self._metrics = metrics

    async def handle(self, msg: Msg) -> None:
        try:
            request = decode(msg.data, CatalogSyncRequest)
        except msgspec.DecodeError as exc:
            self._metrics.catalog_syncs.labels("rejected").inc()
            await msg.respond(encode(CatalogSyncReply(error=f"bad catalog: {exc}")))
            return
        try:
            reply = await sync_catalog(self._pool, request)
        except (asyncpg.PostgresError, OSError) as exc:
            self._metrics.catalog_syncs.labels("failed").inc()
            log.warning("catalog sync failed", worker_id=request.worker_id, error=str(exc))
            await msg.respond(encode(CatalogSyncReply(error="registry database unavailable")))
            return
        self._metrics.catalog_syncs.labels("ok" if reply.error is None else "partial").inc()
        log.info(
            "catalog synced",
            worker_id=request.worker_id,
            upserted=reply.upserted,
            marked_unavailable=reply.marked_unavailable,
            error=reply.error,
        )
        await msg.respond(encode(reply))
