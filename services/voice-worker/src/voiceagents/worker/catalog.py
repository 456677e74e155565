"""Reporting the worker's code tools to the registry (`registry.v1.catalog.sync`).

Runs in the background from the moment the worker starts and retries until the registry has
answered: the registry may be down, and calls never wait for it.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.tools import (
    CATALOG_SYNC_SUBJECT,
    CatalogSyncReply,
    CatalogSyncRequest,
    PlatformToolSpec,
)
from voiceagents.worker.events import now

log = structlog.get_logger("voiceagents.worker.catalog")


async def sync_catalog(
    nc: Client,
    worker_id: str,
    tools: list[PlatformToolSpec],
    *,
    request_timeout: float = 5.0,
    max_delay: float = 60.0,
) -> CatalogSyncReply:
    """Send the catalog until the registry accepts it; returns its reply."""
    delay = 0.5
    while True:
        request = CatalogSyncRequest(worker_id=worker_id, tools=tools, sent_at=now())
        try:
            message = await nc.request(
                CATALOG_SYNC_SUBJECT, encode(request), timeout=request_timeout
            )
            reply = decode(message.data, CatalogSyncReply)
        except (NatsError, TimeoutError, msgspec.ValidationError) as exc:
            log.info(
                "registry not reachable for catalog sync; retrying",
                error=type(exc).__name__,
                retry_in=delay,
            )
        else:
            if reply.error is None:
                log.info(
                    "tool catalog synced",
                    upserted=reply.upserted,
                    marked_unavailable=reply.marked_unavailable,
                )
                return reply
            log.warning(
                "registry refused the tool catalog; retrying", error=reply.error, retry_in=delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
