"""Resource ids are UUIDs; a malformed id names nothing, so it is a 404 like an unknown one."""

from __future__ import annotations

import uuid

from voiceagents.registry.problems import NotFound


def parse_id(value: str, what: str, field: str | None = None) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"{what} {value} not found", field=field) from None
