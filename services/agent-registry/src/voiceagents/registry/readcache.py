"""Agents read from memory: `GET /api/v1/agents/{id}` is the registry's hottest path.

Every write that changes an agent notifies `agent_changed` with its id in the writing
transaction (PostgreSQL delivers it on commit). Each replica listens and drops the entry, and a
replica that wrote drops it itself right after its commit, so it always reads its own writes.
Another replica may answer with the previous version for the moment between a commit and the
notification reaching it (milliseconds), as any read replica would; writes stay safe because
they are conditional on the version.

While the listening connection is down (start-up, PostgreSQL restart) the cache is off and every
read goes to PostgreSQL, so a missed notification can never leave a stale entry behind. A read
that raced with a notification does not store what it read.

Each entry keeps its `GET` response body and headers, encoded once when stored, for
`agents.AnswerFromMemory`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import structlog

from voiceagents.registry.db import connect_one
from voiceagents.registry.outbox import AGENT_CHANGED_CHANNEL
from voiceagents.registry.schemas import Agent

log = structlog.get_logger("voiceagents.registry.readcache")

_LIMIT = 50_000
_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CachedAgent:
    """An agent and its `GET` response, encoded once when it is cached."""

    agent: Agent
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def of(cls, agent: Agent) -> CachedAgent:
        body = msgspec.json.encode(agent)
        headers = (
            (b"etag", b'"%d"' % agent.version),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        )
        return cls(agent=agent, body=body, headers=headers)


class AgentCache:
    def __init__(self) -> None:
        self._agents: dict[str, CachedAgent] = {}
        self._live = False
        # Bumped on every invalidation; a read stores its row only if it did not move.
        self.generation = 0

    def get(self, agent_id: str) -> CachedAgent | None:
        return self._agents.get(agent_id) if self._live else None

    def store(self, agent: Agent, generation: int) -> None:
        if not self._live or generation != self.generation:
            return
        if len(self._agents) >= _LIMIT:
            self._agents.clear()
        self._agents[agent.id] = CachedAgent.of(agent)

    def invalidate(self, agent_id: str) -> None:
        self.generation += 1
        self._agents.pop(agent_id, None)

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        self.invalidate(str(payload))

    def _off(self) -> None:
        self._live = False
        self.generation += 1
        self._agents.clear()

    async def run(self, dsn: str) -> None:
        """Forever: keep a LISTEN connection; the cache is on only while it is up."""
        while True:
            connection: asyncpg.Connection[Any] | None = None
            try:
                connection = await connect_one(dsn)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _c, lost=lost: lost.set())
                await connection.add_listener(AGENT_CHANGED_CHANNEL, self._notified)
                self._live = True
                await lost.wait()
                log.warning("agent cache off: its PostgreSQL connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("agent cache off: cannot listen", error=str(exc))
            finally:
                self._off()
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(_RETRY_SECONDS)
