"""The request middleware: every log line of a request carries its id, and so does the reply."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from voiceagents.registry.app import RequestContext
from voiceagents.registry.logs import add_request_id


async def serve_once(headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], list[Any]]:
    """One request through RequestContext; what a log line made inside it held, and what was
    sent."""
    logged: list[dict[str, Any]] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        logged.append(add_request_id(None, "info", {"event": "inside"}))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/agents",
        "headers": headers,
        "app": SimpleNamespace(state=SimpleNamespace()),
    }
    await RequestContext(handler)(scope, receive, send)  # type: ignore[arg-type]
    return logged[0], sent


async def test_a_callers_request_id_is_on_every_log_line_and_on_the_reply() -> None:
    logged, sent = await serve_once([(b"x-request-id", b"req-123")])

    assert logged["request_id"] == "req-123"
    assert (b"x-request-id", b"req-123") in sent[0]["headers"]
    assert add_request_id(None, "info", {"event": "after"}) == {"event": "after"}


async def test_a_request_without_an_id_gets_a_new_one_each_time() -> None:
    first, sent = await serve_once([])
    second, _ = await serve_once([])

    assert re.fullmatch(r"[0-9a-f]{32}", first["request_id"])
    assert first["request_id"] != second["request_id"]
    assert (b"x-request-id", first["request_id"].encode()) in sent[0]["headers"]
