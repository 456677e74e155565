"""The KV projection calls run on: `agent-config` (agent id -> AgentRuntimeConfig) and
`phone-numbers` (E.164 digits -> PhoneNumberEntry), always computed from PostgreSQL's current
state, never letting an older version replace a newer one already in KV.

- An agent's config carries only its active tools, each with only its enabled functions.
- An inactive agent keeps its config (`is_active: false`) and number: the gateway answers its
  callers with a polite message. A deleted agent's config and number leave KV.
- A number an agent gave up is deleted from KV unless another agent has it by then.
- Binding versions of numbers are global, so a number moving between agents gets a higher one.
- A runtime config is at most `MAX_RUNTIME_CONFIG_BYTES` encoded: writes that would make one
  larger are refused (422), since NATS could not carry it to KV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from voiceagents.contracts.agents import (
    AGENT_CONFIG_BUCKET,
    PHONE_NUMBERS_BUCKET,
    AgentRuntimeConfig,
    PhoneNumberEntry,
    ToolBinding,
    phone_number_key,
)
from voiceagents.contracts.codec import encode
from voiceagents.contracts.tools import PlatformToolSpec
from voiceagents.registry.db import Connection
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.outbox import ReleasedNumber
from voiceagents.registry.problems import Invalid

# NATS refuses messages over its max_payload (1 MB, infra/nats/nats-server.conf); a config of a
# quarter of that leaves room for headers, and a call still loads it quickly.
MAX_RUNTIME_CONFIG_BYTES = 256 * 1024


class _Versioned(msgspec.Struct):
    """Just the `version` of a KV value, whichever bucket it came from."""

    version: int = 0


_version_decoder = msgspec.json.Decoder(_Versioned)


def _version_of(value: bytes | None) -> int:
    if not value:
        return 0
    try:
        return _version_decoder.decode(value).version
    except msgspec.DecodeError:
        return 0


async def load_runtime_config(
    connection: Connection | asyncpg.Pool[Any], agent_id: str
) -> tuple[AgentRuntimeConfig | None, asyncpg.Record | None]:
    """The agent's runtime config (None if deleted or unknown) and its row."""
    row = await connection.fetchrow(
        """
        SELECT id::text, organization_id::text, name, system_prompt, greeting,
            greeting_interruptible, voice, model, language, phone_number, transfer_number,
            max_concurrent_calls, is_active, version, number_version, updated_at, deleted_at
        FROM agents WHERE id = $1
        """,
        agent_id,
    )
    if row is None or row["deleted_at"] is not None:
        return None, row
    tools = await connection.fetch(
        """
        SELECT t.id::text, t.config, t.unselected_functions, p.spec
        FROM agent_tools t JOIN platform_tools p ON p.name = t.tool_name
        WHERE t.agent_id = $1 AND t.is_active
        ORDER BY t.tool_name
        """,
        agent_id,
    )
    bindings = []
    for tool in tools:
        spec = msgspec.convert(tool["spec"], PlatformToolSpec)
        unselected = set(tool["unselected_functions"])
        bindings.append(
            ToolBinding(
                agent_tool_id=tool["id"],
                tool_name=spec.name,
                kind=spec.kind,
                description=spec.description,
                config=tool["config"],
                functions=[f for f in spec.functions if f.name not in unselected],
                auth_type=spec.auth_type,
                timeout_seconds=spec.timeout_seconds,
            )
        )
    config = AgentRuntimeConfig(
        agent_id=row["id"],
        org_id=row["organization_id"],
        version=row["version"],
        name=row["name"],
        system_prompt=row["system_prompt"],
        greeting=row["greeting"],
        greeting_interruptible=row["greeting_interruptible"],
        voice=row["voice"],
        model=row["model"],
        language=row["language"],
        is_active=row["is_active"],
        transfer_number=row["transfer_number"],
        max_concurrent_calls=row["max_concurrent_calls"],
        tools=bindings,
        updated_at=row["updated_at"],
    )
    return config, row


async def check_runtime_config_size(connection: Connection, agent_id: str, field: str) -> None:
    """422 on `field` when the agent's runtime config, as the caller's transaction leaves it,
    would be over `MAX_RUNTIME_CONFIG_BYTES`."""
    config, _ = await load_runtime_config(connection, agent_id)
    if config is None:
        return
    size = len(encode(config))
    if size > MAX_RUNTIME_CONFIG_BYTES:
        raise Invalid(
            f"this change makes agent {agent_id}'s runtime config {size} bytes; the limit is "
            f"{MAX_RUNTIME_CONFIG_BYTES} bytes (its prompt, greeting and every tool binding's "
            "config and functions together)",
            field=field,
        )


class _Changed(Exception):
    """A KV key changed after the value to put there was computed: compute it again."""


# Whether PostgreSQL still has something for a KV key (keys are text: no cast that can fail).
_AGENT_IS_LIVE = "SELECT true FROM agents WHERE id::text = $1 AND deleted_at IS NULL"
_NUMBER_IS_BOUND = "SELECT true FROM agents WHERE phone_number = '+' || $1 AND deleted_at IS NULL"


@dataclass
class KvProjector:
    """Writes projections into the two buckets with compare-and-set on the KV revision."""

    agents: KeyValue
    numbers: KeyValue
    metrics: RegistryMetrics

    @classmethod
    async def open(cls, js: JetStreamContext, metrics: RegistryMetrics) -> KvProjector:
        return cls(
            agents=await js.key_value(AGENT_CONFIG_BUCKET),
            numbers=await js.key_value(PHONE_NUMBERS_BUCKET),
            metrics=metrics,
        )

    async def _get(self, kv: KeyValue, key: str) -> tuple[KeyValue.Entry | None, int]:
        """The key's value (None if absent or deleted) and its latest revision, a delete
        marker's included (0 if the key never had one)."""
        try:
            entry = await kv.get(key)
        except KeyNotFoundError as exc:  # also a deleted key, whose marker is `exc.entry`
            marker = exc.entry
            return None, marker.revision if marker is not None and marker.revision else 0
        return entry, entry.revision or 0

    async def _put(
        self,
        kv: KeyValue,
        bucket: str,
        key: str,
        value: bytes,
        version: int,
        seen: int | None = None,
    ) -> None:
        """Put `value` unless KV holds a newer version. With `seen` (the key's revision read
        before the value was computed), a key written or deleted since then is not overwritten:
        `_Changed` tells the caller to compute the value again."""
        while True:
            entry, revision = await self._get(kv, key)
            if seen is not None and revision != seen:
                raise _Changed
            try:
                if entry is not None and _version_of(entry.value) > version:
                    self.metrics.kv_writes.labels(bucket, "skipped_newer").inc()
                    return
                if entry is not None and entry.value == value:
                    self.metrics.kv_writes.labels(bucket, "unchanged").inc()
                    return
                if revision:
                    await kv.update(key, value, last=revision)
                else:
                    await kv.create(key, value)
            except KeyWrongLastSequenceError:
                if seen is not None:
                    raise _Changed from None
                continue  # someone wrote in between: look again
            self.metrics.kv_writes.labels(bucket, "put").inc()
            return

    async def _delete(self, kv: KeyValue, bucket: str, key: str, version: int | None) -> None:
        """Delete `key` unless it holds a newer version than `version` by now."""
        while True:
            entry, _ = await self._get(kv, key)
            if entry is None:
                return
            if version is not None and _version_of(entry.value) > version:
                self.metrics.kv_writes.labels(bucket, "skipped_newer").inc()
                return
            try:
                await kv.delete(key, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            self.metrics.kv_writes.labels(bucket, "deleted").inc()
            return

    async def put_agent(self, config: AgentRuntimeConfig) -> None:
        await self._put(
            self.agents, AGENT_CONFIG_BUCKET, config.agent_id, encode(config), config.version
        )

    async def put_number(self, entry: PhoneNumberEntry) -> None:
        await self._put(
            self.numbers,
            PHONE_NUMBERS_BUCKET,
            phone_number_key(entry.phone_number),
            encode(entry),
            entry.version,
        )

    async def project_agent(self, pool: asyncpg.Pool[Any], agent_id: str) -> None:
        """Make KV say what PostgreSQL says about this agent now. A config read from PostgreSQL
        before a concurrent projection (the relay next to `rebuild`) wrote or deleted the key
        is read again, so a deleted agent never comes back."""
        while True:
            _, seen = await self._get(self.agents, agent_id)
            config, row = await load_runtime_config(pool, agent_id)
            if config is None:
                version = row["version"] if row is not None else None
                await self._delete(self.agents, AGENT_CONFIG_BUCKET, agent_id, version)
                return
            assert row is not None
            try:
                await self._put(
                    self.agents,
                    AGENT_CONFIG_BUCKET,
                    agent_id,
                    encode(config),
                    config.version,
                    seen,
                )
            except _Changed:
                continue
            break
        if row["phone_number"]:
            await self._project_number(pool, row["phone_number"], config)

    async def _project_number(
        self, pool: asyncpg.Pool[Any], phone_number: str, config: AgentRuntimeConfig
    ) -> None:
        """Bind the number to the agent in KV while PostgreSQL, asked after the key's revision
        was read, still binds it so."""
        key = phone_number_key(phone_number)
        while True:
            _, seen = await self._get(self.numbers, key)
            version = await pool.fetchval(
                """
                SELECT number_version FROM agents
                WHERE id = $1 AND phone_number = $2 AND deleted_at IS NULL
                """,
                config.agent_id,
                phone_number,
            )
            if version is None:
                return  # it moved or was released since: that change projects it
            entry = PhoneNumberEntry(
                phone_number=phone_number,
                agent_id=config.agent_id,
                org_id=config.org_id,
                version=version,
            )
            try:
                await self._put(
                    self.numbers, PHONE_NUMBERS_BUCKET, key, encode(entry), version, seen
                )
            except _Changed:
                continue
            return

    async def release_number(self, pool: asyncpg.Pool[Any], released: ReleasedNumber) -> None:
        """A number left an agent: bind it to its new agent, or delete it from KV."""
        holder = await pool.fetchrow(
            """
            SELECT id::text, organization_id::text, number_version FROM agents
            WHERE phone_number = $1 AND deleted_at IS NULL
            """,
            released.phone_number,
        )
        if holder is not None:
            await self.put_number(
                PhoneNumberEntry(
                    phone_number=released.phone_number,
                    agent_id=holder["id"],
                    org_id=holder["organization_id"],
                    version=holder["number_version"],
                )
            )
            return
        await self._delete(
            self.numbers,
            PHONE_NUMBERS_BUCKET,
            phone_number_key(released.phone_number),
            released.version,
        )

    async def rebuild(self, pool: asyncpg.Pool[Any]) -> tuple[int, int]:
        """Disaster recovery: make both buckets match PostgreSQL. Idempotent, and safe while
        the relay writes: a key is removed only if PostgreSQL, asked after its revision was
        read, has no such agent or number, and only if that revision is still the latest.

        Returns (keys written or confirmed, keys removed)."""
        live = await pool.fetch(
            "SELECT id::text, phone_number FROM agents WHERE deleted_at IS NULL ORDER BY id"
        )
        for row in live:
            await self.project_agent(pool, row["id"])
        agent_ids = {row["id"] for row in live}
        number_keys = {phone_number_key(row["phone_number"]) for row in live if row["phone_number"]}
        removed = 0
        for kv, bucket, keep, wanted in (
            (self.agents, AGENT_CONFIG_BUCKET, agent_ids, _AGENT_IS_LIVE),
            (self.numbers, PHONE_NUMBERS_BUCKET, number_keys, _NUMBER_IS_BOUND),
        ):
            for key in await self._keys(kv):
                if key not in keep and await self._remove_stale(pool, kv, bucket, key, wanted):
                    removed += 1
        return len(agent_ids) + len(number_keys), removed

    async def _remove_stale(
        self, pool: asyncpg.Pool[Any], kv: KeyValue, bucket: str, key: str, wanted: str
    ) -> bool:
        """Delete `key` if PostgreSQL has nothing for it; True if it was deleted."""
        while True:
            entry, _ = await self._get(kv, key)
            if entry is None:
                return False
            # Asked after reading the revision: a write that lands later changes the revision.
            if await pool.fetchval(wanted, key):
                return False
            try:
                await kv.delete(key, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            self.metrics.kv_writes.labels(bucket, "deleted").inc()
            return True

    async def _keys(self, kv: KeyValue) -> list[str]:
        try:
            return list(await kv.keys())
        except NoKeysError:
            return []
