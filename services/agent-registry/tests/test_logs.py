"""A log line is one JSON object; values JSON cannot hold are written as their repr."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from voiceagents.registry.logs import render_json

pytestmark = pytest.mark.unit


class Opaque:
    def __repr__(self) -> str:
        return "<opaque 7>"


def test_a_line_is_one_json_object_with_every_field() -> None:
    event = {
        "event": "request",
        "status": 200,
        "duration_ms": 1.25,
        "at": datetime(2026, 11, 29, 21, 0, tzinfo=UTC),
        "thing": Opaque(),
        "tags": ["a", "é"],
    }

    line = render_json(event, default=str)

    assert "\n" not in line
    assert json.loads(line) == {
        "event": "request",
        "status": 200,
        "duration_ms": 1.25,
        "at": "2026-11-29T21:00:00Z",
        "thing": "<opaque 7>",
        "tags": ["a", "é"],
    }
