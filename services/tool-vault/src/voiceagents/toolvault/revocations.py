"""Calls that have ended: their grants stop releasing credentials at once, before they expire.

(The grant itself is verified by `voiceagents.contracts.grants`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Revocations:
    """Calls that have ended, by call_sid, kept as long as a grant for them could live."""

    def __init__(self, keep_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self._keep = keep_seconds
        self._clock = clock
        self._until: dict[str, float] = {}
        self._next_sweep = 0.0

    def revoke(self, call_sid: str, ended_at: float) -> None:
        self._until[call_sid] = ended_at + self._keep
        now = self._clock()
        if now >= self._next_sweep:
            self._until = {sid: t for sid, t in self._until.items() if t > now}
            self._next_sweep = now + 60.0

    def is_revoked(self, call_sid: str) -> bool:
        return call_sid in self._until

    def __len__(self) -> int:
        return len(self._until)
