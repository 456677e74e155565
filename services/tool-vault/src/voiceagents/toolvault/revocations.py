"""Calls that have ended: their grants stop releasing credentials at once, before they expire.

(The grant itself is verified by `voiceagents.contracts.grants`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable


class Revocations:
    """Calls that have ended, by call_sid, kept as long as a grant for them could live.

    `current` is set while every end published so far has been applied (the call-end follower
    has caught up); a release must not be answered while it is clear."""

    def __init__(self, keep_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self._keep = keep_seconds
        self._clock = clock
        self._until: dict[str, float] = {}
        self._next_sweep = 0.0
        self.current = asyncio.Event()

    def revoke(self, call_sid: str, ended_at: float) -> None:
        self._until[call_sid] = ended_at + self._keep
        now = self._clock()
        if now >= self._next_sweep:
            self._until = {sid: t for sid, t in self._until.items() if t > now}
            self._next_sweep = now + 60.0

    def is_revoked(self, call_sid: str) -> bool:
        return call_sid in self._until

    async def wait_current(self, timeout: float) -> bool:
        """Whether the set is current, waiting up to `timeout` seconds for it to become so."""
        if self.current.is_set():  # every release asks: no task for the usual answer
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.current.wait(), timeout)
        return self.current.is_set()

    def __len__(self) -> int:
        return len(self._until)
