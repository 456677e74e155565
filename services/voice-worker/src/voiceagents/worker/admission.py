"""Admission by exact count: a worker runs at most MAX_CALLS calls, and says so to LiveKit.

LiveKit's default load is CPU-based and refreshed on a timer, so two jobs arriving within one
refresh can both be accepted (livekit/agents#4884). Here the load is the exact number of calls
accepted or running, and the job request handler checks that count and reserves a slot in one
step of the event loop (no await in between), so no burst can over-assign; a refused job goes
back to LiveKit for another worker (`terminate=False`).

livekit-server offers a job only to workers whose reported load is under its target load (0.7
by default: `affinity = max(0, target_load - load)`), so the count is reported on that scale:
`load = calls / MAX_CALLS * target_load`. A worker with a free slot is always below the target,
and a full worker sits exactly on it, where both the server and livekit-agents stop offering.
"""

from __future__ import annotations

import structlog
from livekit.agents import AgentServer, JobRequest

log = structlog.get_logger("voiceagents.worker.admission")

# livekit-server's default `target_load`; a deployment that changes it sets the same here.
DEFAULT_TARGET_LOAD = 0.7


class Admission:
    def __init__(self, max_calls: int, target_load: float = DEFAULT_TARGET_LOAD) -> None:
        self.max_calls = max_calls
        # The load at which the worker is full (also livekit-agents' `load_threshold`).
        self.target_load = target_load
        self._server: AgentServer | None = None
        # Accepted but not yet running in a job process.
        self._reserved = 0
        # Jobs refused because the worker was full or draining (the `rejected_jobs` metric).
        self.rejected = 0

    def bind(self, server: AgentServer) -> None:
        self._server = server

    def in_use(self) -> int:
        running = len(self._server.active_jobs) if self._server is not None else 0
        return running + self._reserved

    def load(self) -> float:
        """The load LiveKit sees: `target_load` means full."""
        in_use = self.in_use()
        return min(in_use, self.max_calls) / self.max_calls * self.target_load

    async def on_request(self, request: JobRequest) -> None:
        draining = self._server is not None and self._server.draining
        if draining or self.in_use() >= self.max_calls:
            self.rejected += 1
            log.info(
                "job refused",
                room=request.room.name,
                reason="draining" if draining else "full",
                in_use=self.in_use(),
                max_calls=self.max_calls,
            )
            await request.reject(terminate=False)
            return
        self._reserved += 1
        try:
            await request.accept(name="Voice agent")
        finally:
            self._reserved -= 1
