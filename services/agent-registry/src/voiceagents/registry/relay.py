"""The outbox relay: publishes committed registry events to JetStream (`Nats-Msg-Id` = outbox
id, so a republish after a crash is dropped by the stream's duplicate window), projects the
affected agents into KV, then marks the outbox row sent.

Rows go strictly in commit order, one relay at a time across all replicas (a PostgreSQL advisory
lock), so events and KV writes for an agent are never reordered. The lock lives as long as its
connection: the relay checks that connection before every pass and every row, and stops (then
waits for the lock again) the moment it is gone. The relay wakes on `NOTIFY` from the committing
transaction; a slow timer only covers a lost notification. While NATS or PostgreSQL is down it
retries with backoff and writes keep succeeding (they only need PostgreSQL); when NATS returns,
everything pending goes out in order. A row that can never go out (its agent's runtime config is
over NATS' max_payload, a row this version cannot read) is parked with the reason instead of
holding up every later row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from voiceagents.registry.db import connect_one
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.outbox import NOTIFY_CHANNEL, ReleasedNumber
from voiceagents.registry.projection import KvProjector

log = structlog.get_logger("voiceagents.registry.relay")

_RELAY_LOCK = 0x7265_6C61_7900_0001
_BATCH = 100
_IDLE_WAKE_SECONDS = 5.0
_PUBLISH_TIMEOUT = 2.0
_MAX_BACKOFF = 5.0
_LOCK_CHECK_TIMEOUT = 5.0
# What a retry can fix: NATS or PostgreSQL unreachable, slow or restarting.
_TRANSIENT = (
    nats.errors.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


class RelayLockLost(Exception):
    """The connection holding the relay lock is gone, and with it the lock."""


def _never_publishable(exc: Exception) -> bool:
    """Whether `exc` will recur on every attempt at the same row, whatever else recovers."""
    if isinstance(exc, (nats.errors.MaxPayloadError, BadRequestError, msgspec.MsgspecError)):
        return True  # too large for NATS or JetStream, or a row this version cannot read
    return not isinstance(exc, _TRANSIENT)


class OutboxRelay:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool[Any],
        js: JetStreamContext,
        projector: KvProjector,
        metrics: RegistryMetrics,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._js = js
        self._projector = projector
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._connection: asyncpg.Connection[Any] | None = None
        # Set after every pass that left nothing pending (tests and the CLI wait on it).
        self.idle = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forever: hold the relay lock, drain the outbox on every notification."""
        backoff = 0.1
        while True:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except RelayLockLost:
                log.warning("outbox relay lost its lock; stopped until it holds it again")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception as exc:  # PostgreSQL went away: reconnect with backoff
                log.warning("outbox relay lost its database connection", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def close(self) -> None:
        """Drop the lock-holding connection at once (shutdown; a waiting query ends with it)."""
        if self._connection is not None:
            self._connection.terminate()

    async def _serve(self) -> None:
        self._connection = connection = await connect_one(self._dsn)
        try:
            # One relay across replicas; another one blocks here and takes over if this one goes.
            await connection.execute("SELECT pg_advisory_lock($1)", _RELAY_LOCK)
            await connection.add_listener(NOTIFY_CHANNEL, self._notified)
            # The lock goes with its connection (idle timeout, pg_terminate_backend): wake up
            # to notice at once rather than at the next pass.
            connection.add_termination_listener(self._notified)
            log.info("outbox relay active")
            backoff = 0.05
            while True:
                self._wake.clear()
                await self._check_lock(connection)
                try:
                    pending = await self.drain()
                except (asyncpg.PostgresConnectionError, OSError, RelayLockLost):
                    raise
                except Exception as exc:  # NATS unreachable or slow: keep order, retry later
                    self._metrics.relay_failures.inc()
                    log.warning("outbox relay could not publish; retrying", error=str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                backoff = 0.05
                if pending:
                    continue
                self.idle.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_WAKE_SECONDS)
        finally:
            self._connection = None
            connection.terminate()

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    async def _check_lock(self, connection: asyncpg.Connection[Any]) -> None:
        """A round trip on the lock's connection: a session that answers still holds its
        session-level advisory lock; one that does not has lost it (a dropped connection is
        not always noticed until it is used)."""
        if connection.is_closed():
            raise RelayLockLost
        try:
            await connection.execute("SELECT 1", timeout=_LOCK_CHECK_TIMEOUT)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            raise RelayLockLost from None

    def _holds_lock(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def drain(self) -> bool:
        """Publish one batch; True if more may be pending."""
        rows = await self._pool.fetch(
            """
            SELECT seq, id::text, subject, payload, agent_ids::text[] AS agent_ids,
                released_numbers, created_at
            FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT $1
            """,
            _BATCH,
        )
        self._metrics.outbox_pending.set(len(rows))
        if rows:
            self.idle.clear()
        for row in rows:
            if not self._holds_lock():
                raise RelayLockLost
            try:
                await self._relay(row)
            except Exception as exc:
                if not _never_publishable(exc):
                    raise
                await self._park(row, exc)
                continue
            await self._pool.execute("UPDATE outbox SET sent_at = now() WHERE seq = $1", row["seq"])
            self._metrics.outbox_published.inc()
            self._metrics.outbox_lag_seconds.observe(
                max(0.0, (datetime.now(UTC) - row["created_at"]).total_seconds())
            )
        return len(rows) == _BATCH

    async def _relay(self, row: asyncpg.Record) -> None:
        await self._js.publish(
            row["subject"],
            bytes(row["payload"]),
            timeout=_PUBLISH_TIMEOUT,
            headers={"Nats-Msg-Id": row["id"]},
        )
        for released in msgspec.convert(row["released_numbers"], list[ReleasedNumber]):
            await self._projector.release_number(self._pool, released)
        for agent_id in row["agent_ids"]:
            await self._projector.project_agent(self._pool, agent_id)

    async def _park(self, row: asyncpg.Record, exc: Exception) -> None:
        """Set the row aside with the reason: a retry would fail the same way and hold up
        every later row of every organization. `parked_at = NULL` sends it again."""
        reason = f"{type(exc).__name__}: {exc}"[:1000]
        await self._pool.execute(
            "UPDATE outbox SET parked_at = now(), park_reason = $2 WHERE seq = $1",
            row["seq"],
            reason,
        )
        self._metrics.outbox_parked.inc()
        log.error(
            "outbox event parked: it can never be published",
            seq=row["seq"],
            event_id=row["id"],
            subject=row["subject"],
            agent_ids=list(row["agent_ids"]),
            error=reason,
        )

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until everything committed before this call is published (tests, CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            self.idle.clear()
            self.wake()
            pending = await self._pool.fetchval(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL"
            )
            if not pending:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{pending} outbox events still unpublished")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), remaining)
