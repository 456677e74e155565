"""The one generic executor of declarative HTTP tools (`kind="http"` in the registry).

A function's `HttpRequestTemplate` names placeholders: `{param}` for the model's arguments,
`{config.key}` for the agent tool's non-secret config, `{secret.name}` and `{access_token}` for
the credentials tool-vault released for this call. Arguments in the URL are percent-encoded; a body
value that is exactly one placeholder keeps the argument's JSON type.

Where a request may go is decided by the client's SSRF guard (`ssrf.guarded_client`): every
request carries its agent tool's `network_allowlist`, so an admin can open the guard for one
internal API without opening it for every tool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema

from voiceagents.contracts.tools import ToolFunctionSpec
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.ssrf import ALLOWLIST_EXTENSION, Allowlist

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
# A tool's answer is spoken, never a download: a larger response is refused unread.
MAX_RESPONSE_BYTES = 256 * 1024
# What of a response reaches the model (it reads it aloud, and every token costs time):
# text is cut, JSON keeps its first list items, object keys and characters of each string.
MAX_RESPONSE_CHARS = 4000
MAX_LIST_ITEMS = 10
MAX_OBJECT_KEYS = 40
MAX_STRING_CHARS = 500


class ResponseTooLarge(Exception):
    """The API answered more than `MAX_RESPONSE_BYTES`."""


class TemplateError(ValueError):
    """A template references something that is not there; the message names it."""


class HttpToolExecutor:
    """Runs declarative HTTP functions with one shared HTTP client: `ssrf.guarded_client()`."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def execute(
        self,
        spec: ToolFunctionSpec,
        config: Mapping[str, Any],
        credentials: ToolCredentials | None,
        arguments: Mapping[str, Any],
    ) -> Any:
        if spec.http is None:
            raise TemplateError(f"function {spec.name!r} has no http template")
        jsonschema.validate(dict(arguments), spec.parameters)
        values = _values(config, credentials, arguments)
        template = spec.http
        url = _fill(template.url_template, values, encode=True)
        headers = {name: _fill(value, values) for name, value in template.headers_template.items()}
        if (
            credentials is not None
            and credentials.access_token
            and not any(name.lower() == "authorization" for name in headers)
        ):
            headers["Authorization"] = f"{credentials.token_type} {credentials.access_token}"
        body = (
            None if template.body_template is None else _fill_json(template.body_template, values)
        )
        request = self._client.build_request(template.method, url, headers=headers, json=body)
        # The guard reads it on this request and on every redirect it leads to.
        request.extensions[ALLOWLIST_EXTENSION] = Allowlist.from_config(config)
        response = await self._client.send(request, stream=True)
        try:
            response.raise_for_status()
            body = await _read_capped(response)
        finally:
            await response.aclose()
        if "json" in response.headers.get("content-type", ""):
            return trimmed(json.loads(body))
        return body.decode(response.encoding or "utf-8", errors="replace")[:MAX_RESPONSE_CHARS]


async def _read_capped(response: httpx.Response) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise ResponseTooLarge(f"response of {declared} bytes")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise ResponseTooLarge(f"response over {MAX_RESPONSE_BYTES} bytes")
    return bytes(body)


def trimmed(value: Any) -> Any:
    """A JSON value cut to what a model can use on a call, saying what was left out."""
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        return value[:MAX_STRING_CHARS] + "…"
    if isinstance(value, list):
        kept = [trimmed(item) for item in value[:MAX_LIST_ITEMS]]
        if len(value) > MAX_LIST_ITEMS:
            kept.append(f"({len(value) - MAX_LIST_ITEMS} more not shown)")
        return kept
    if isinstance(value, dict):
        items = list(value.items())
        kept_object = {key: trimmed(item) for key, item in items[:MAX_OBJECT_KEYS]}
        if len(items) > MAX_OBJECT_KEYS:
            kept_object["_not_shown"] = f"{len(items) - MAX_OBJECT_KEYS} more fields"
        return kept_object
    return value


def _values(
    config: Mapping[str, Any], credentials: ToolCredentials | None, arguments: Mapping[str, Any]
) -> dict[str, Any]:
    values: dict[str, Any] = dict(arguments)
    values.update({f"config.{key}": value for key, value in config.items()})
    if credentials is not None:
        values.update({f"secret.{key}": value for key, value in credentials.secrets.items()})
        if credentials.access_token:
            values["access_token"] = credentials.access_token
    return values


def _lookup(name: str, values: Mapping[str, Any]) -> Any:
    if name not in values:
        # Name the placeholder only: its value may be a secret, its name is not.
        raise TemplateError(f"template placeholder {{{name}}} has no value")
    return values[name]


def _fill(template: str, values: Mapping[str, Any], *, encode: bool = False) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        text = str(_lookup(name, values))
        # The model's arguments cannot add path segments or query parameters; config values
        # (a base URL) are the admin's and are used as written.
        return quote(text, safe="") if encode and "." not in name else text

    return _PLACEHOLDER.sub(replace, template)


def _fill_json(template: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole is not None:
            return _lookup(whole.group(1), values)
        return _fill(template, values)
    if isinstance(template, dict):
        return {key: _fill_json(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill_json(item, values) for item in template]
    return template
