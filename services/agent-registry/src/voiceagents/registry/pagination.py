"""Keyset pagination: an opaque cursor holds the sort key of the last row of a page, so pages
stay correct while rows are added and every page is one index range scan."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from voiceagents.registry.problems import Invalid


def encode_cursor(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, key = raw.split("|", 1)
        return datetime.fromisoformat(at), key
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Invalid("cursor is not a cursor this API returned", field="cursor") from exc
