"""The transactional outbox: a write commits its row and the event describing it together.

The relay (relay.py) publishes what is committed here; `NOTIFY` wakes it the moment the writing
transaction commits (PostgreSQL delivers notifications only on commit, never on rollback).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from voiceagents.contracts.codec import encode
from voiceagents.contracts.registry import (
    RegistryAction,
    RegistryEntity,
    RegistryEvent,
    registry_event_subject,
)
from voiceagents.registry.db import Connection

NOTIFY_CHANNEL = "registry_outbox"
# Payload: the id of an agent whose row or runtime config changed (read caches drop it).
AGENT_CHANGED_CHANNEL = "agent_changed"


class ReleasedNumber(msgspec.Struct, frozen=True, kw_only=True):
    """A phone number a change took away from an agent, and the binding version of that change."""

    phone_number: str
    version: int


async def record(
    connection: Connection,
    *,
    entity: RegistryEntity,
    action: RegistryAction,
    entity_id: str,
    actor: str | None,
    org_id: str | None = None,
    agent_id: str | None = None,
    version: int | None = None,
    project_agents: list[str] | None = None,
    released_numbers: list[ReleasedNumber] | None = None,
) -> str:
    """Add an event to the outbox inside the caller's transaction; returns its id."""
    event_id = str(uuid.uuid4())
    event = RegistryEvent(
        event_id=event_id,
        entity=entity,
        action=action,
        entity_id=entity_id,
        org_id=org_id,
        agent_id=agent_id,
        version=version,
        actor=actor,
        occurred_at=datetime.now(UTC),
    )
    await connection.execute(
        """
        INSERT INTO outbox (id, subject, payload, agent_ids, released_numbers)
        VALUES ($1, $2, $3, $4::uuid[], $5);
        """,
        event_id,
        registry_event_subject(entity, action),
        encode(event),
        project_agents or [],
        msgspec.to_builtins(released_numbers or []),
    )
    await connection.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    for changed in project_agents or []:
        await connection.execute("SELECT pg_notify($1, $2)", AGENT_CHANGED_CHANNEL, changed)
    return event_id
