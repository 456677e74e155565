"""Keyset pagination: an opaque cursor holds the sort key of the last row of a page, so pages
stay correct while rows are added and every page is one index range scan."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from voiceagents.registry.problems import Invalid


def encode_cursor(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, uuid_key: bool = True) -> tuple[datetime, str]:
    """The sort key a cursor holds: an aware time and a row id (a UUID unless `uuid_key` is
    False). A cursor altered into anything else is a 422 on `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, key = raw.split("|", 1)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or "\x00" in key:
            raise ValueError("not a cursor")
        return when, str(uuid.UUID(key)) if uuid_key else key
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Invalid("cursor is not a cursor this API returned", field="cursor") from exc
