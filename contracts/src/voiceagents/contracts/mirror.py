"""In-memory mirror of the runtime config in NATS KV (`agent-config`, `phone-numbers`).

The gateway, voice workers and tool-vault route calls and check bindings from this mirror, so
the call path never waits on the registry, PostgreSQL or even a NATS round trip. The mirror is
filled from KV at start and kept current by a KV watch; it never lets an older `version` of an
agent or number replace a newer one (the registry's relay may republish after a crash).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from voiceagents.contracts.agents import (
    AGENT_CONFIG_BUCKET,
    PHONE_NUMBERS_BUCKET,
    AgentRuntimeConfig,
    PhoneNumberEntry,
    phone_number_key,
)
from voiceagents.contracts.codec import decode

log = logging.getLogger(__name__)

ChangeListener = Callable[[str, str], None]

_QUOTED = re.compile(r"'[^']*'")


class ConfigMirror:
    """Agents by id and phone numbers by E.164, answered from memory."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentRuntimeConfig] = {}
        self._numbers: dict[str, PhoneNumberEntry] = {}
        # Highest version seen per key, kept after a delete so a late stale put stays out.
        self._agent_versions: dict[str, int] = {}
        self._number_versions: dict[str, int] = {}
        self._listeners: list[ChangeListener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[KeyValue.KeyWatcher] = []
        self._stopping = False
        # Set once the initial values are in; cleared if a watch stops (readiness turns false).
        self.ready = asyncio.Event()

    # -- lookups (the hot path: dictionary reads only) -------------------------------------

    def agent(self, agent_id: str) -> AgentRuntimeConfig | None:
        return self._agents.get(agent_id)

    def number(self, e164: str) -> PhoneNumberEntry | None:
        return self._numbers.get(phone_number_key(e164))

    def route(self, e164: str) -> tuple[PhoneNumberEntry, AgentRuntimeConfig] | None:
        """The number's entry and its agent's config, or None if the number is not bound."""
        entry = self._numbers.get(phone_number_key(e164))
        if entry is None:
            return None
        agent = self._agents.get(entry.agent_id)
        return None if agent is None else (entry, agent)

    def agents(self) -> list[AgentRuntimeConfig]:
        return list(self._agents.values())

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(bucket, key)` after every applied change."""
        self._listeners.append(listener)

    # -- applying changes ------------------------------------------------------------------

    def apply_agent(self, config: AgentRuntimeConfig) -> bool:
        """Store `config` unless a newer version is already known. True if applied."""
        if config.version < self._agent_versions.get(config.agent_id, -1):
            return False
        self._agent_versions[config.agent_id] = config.version
        self._agents[config.agent_id] = config
        self._notify(AGENT_CONFIG_BUCKET, config.agent_id)
        return True

    def apply_number(self, entry: PhoneNumberEntry) -> bool:
        key = phone_number_key(entry.phone_number)
        if entry.version < self._number_versions.get(key, -1):
            return False
        self._number_versions[key] = entry.version
        self._numbers[key] = entry
        self._notify(PHONE_NUMBERS_BUCKET, key)
        return True

    def remove_agent(self, agent_id: str) -> None:
        if self._agents.pop(agent_id, None) is not None:
            self._notify(AGENT_CONFIG_BUCKET, agent_id)

    def remove_number(self, key: str) -> None:
        if self._numbers.pop(key, None) is not None:
            self._notify(PHONE_NUMBERS_BUCKET, key)

    def _notify(self, bucket: str, key: str) -> None:
        for listener in self._listeners:
            listener(bucket, key)

    # -- keeping current from KV -----------------------------------------------------------

    async def start(self, js: JetStreamContext) -> None:
        """Fill from both buckets, then keep watching. Returns once the initial values are in;
        raises if a watch stops before that."""
        buckets = (AGENT_CONFIG_BUCKET, PHONE_NUMBERS_BUCKET)
        initial = [asyncio.Event(), asyncio.Event()]
        for bucket, loaded in zip(buckets, initial, strict=True):
            kv = await js.key_value(bucket)
            watcher = await kv.watchall()
            self._watchers.append(watcher)
            self._tasks.append(asyncio.create_task(self._follow(bucket, watcher, loaded)))
        filled = asyncio.ensure_future(asyncio.gather(*(event.wait() for event in initial)))
        waiting: set[asyncio.Future[Any]] = {filled, *self._tasks}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            filled.cancel()
        if not all(event.is_set() for event in initial):
            await self.stop()
            raise RuntimeError("a KV watch stopped before the initial values were in")
        self.ready.set()

    async def stop(self) -> None:
        self._stopping = True
        for watcher in self._watchers:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except Exception:  # the connection may already be closed
                log.debug("kv watcher stop failed", exc_info=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._watchers.clear()

    async def _follow(
        self, bucket: str, watcher: KeyValue.KeyWatcher, loaded: asyncio.Event
    ) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # end of the initial values
                    loaded.set()
                    continue
                try:
                    self._apply_entry(bucket, entry)
                except msgspec.DecodeError as exc:  # not JSON, or not this version's shape
                    # Keep serving what we have and keep following. msgspec quotes offending
                    # values (an unknown enum value); the log names the problem, never a value.
                    log.error(
                        "unreadable %s entry for key %s skipped (revision %s): %s",
                        bucket,
                        entry.key,
                        entry.revision,
                        _QUOTED.sub("'…'", str(exc)),
                    )
        except Exception:
            # Anything else would leave the mirror silently stale: say so, and stop being ready.
            log.exception("kv watch of %s stopped; the mirror is no longer current", bucket)
            self.ready.clear()
            return
        if not self._stopping:
            log.error("kv watch of %s ended; the mirror is no longer current", bucket)
            self.ready.clear()

    def _apply_entry(self, bucket: str, entry: KeyValue.Entry) -> None:
        deleted = entry.operation in (KV_DEL, KV_PURGE)
        if bucket == AGENT_CONFIG_BUCKET:
            if deleted:
                self.remove_agent(entry.key)
            elif entry.value is not None:
                self.apply_agent(decode(entry.value, AgentRuntimeConfig))
        elif deleted:
            self.remove_number(entry.key)
        elif entry.value is not None:
            self.apply_number(decode(entry.value, PhoneNumberEntry))
