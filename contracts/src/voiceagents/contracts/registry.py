"""Registry events on the `REGISTRY` stream (`registry.v1.events.<entity>.<action>`).

They say what changed, never a secret; the full state is in KV (agents.py) and the REST API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

REGISTRY_STREAM = "REGISTRY"
REGISTRY_EVENTS_SUBJECTS = "registry.v1.events.>"

RegistryEntity = Literal[
    "organization", "agent", "agent_tool", "platform_tool", "knowledge", "api_key"
]
RegistryAction = Literal["created", "updated", "deleted"]


def registry_event_subject(entity: RegistryEntity, action: RegistryAction) -> str:
    return f"registry.v1.events.{entity}.{action}"


class RegistryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something an admin changed. `event_id` is the outbox id (also the Nats-Msg-Id)."""

    event_id: str
    entity: RegistryEntity
    action: RegistryAction
    entity_id: str
    org_id: str | None = None
    agent_id: str | None = None
    version: int | None = None
    actor: str | None = None
    occurred_at: datetime
