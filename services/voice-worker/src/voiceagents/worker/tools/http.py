"""The one generic executor of declarative HTTP tools (`kind="http"` in the registry).

A function's `HttpRequestTemplate` names placeholders: `{config.key}` for the agent tool's
non-secret config, `{secret.name}` and `{access_token}` for the credentials tool-vault released for
this call, and any other name (`{id}`, `{customer.id}`) for the model's arguments. Admin values are
used as written; arguments in the URL are always percent-encoded (they cannot add a path segment, a
query parameter or a host), and one that is a dot segment (`.`, `..`), or empty in the path, is
refused. A body value that
is exactly one placeholder keeps the argument's JSON type.

Where a request may go is decided by the client's SSRF guard (`ssrf.guarded_client`): every
request carries its agent tool's `network_allowlist`, so an admin can open the guard for one
internal API without opening it for every tool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema

from voiceagents.contracts.tools import ToolFunctionSpec
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.ssrf import ALLOWLIST_EXTENSION, Allowlist, RequestRefused

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
# Placeholders an admin or tool-vault fills; every other name is a model argument.
_ADMIN_PREFIXES = ("config.", "secret.")
_ACCESS_TOKEN = "access_token"  # noqa: S105 - a placeholder's name, not a token
# Path segments that httpx (and servers) resolve away: "/orders/.." is "/".
_DOT_SEGMENTS = frozenset({".", ".."})
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


class ArgumentRefused(RequestRefused):
    """A model argument would change which resource the URL names (a dot segment)."""


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


def _is_argument(name: str) -> bool:
    """Whether a placeholder is filled by the model, decided by its namespace alone (a model
    parameter may itself be named `customer.id`)."""
    return not name.startswith(_ADMIN_PREFIXES) and name != _ACCESS_TOKEN


@dataclass(frozen=True)
class _Values:
    # `config.key`, `secret.name`, `access_token`: the admin's and tool-vault's, used as written.
    admin: Mapping[str, Any]
    arguments: Mapping[str, Any]

    def get(self, name: str) -> Any:
        source = self.arguments if _is_argument(name) else self.admin
        if name not in source:
            # Name the placeholder only: its value may be a secret, its name is not.
            raise TemplateError(f"template placeholder {{{name}}} has no value")
        return source[name]


def _values(
    config: Mapping[str, Any], credentials: ToolCredentials | None, arguments: Mapping[str, Any]
) -> _Values:
    admin: dict[str, Any] = {f"config.{key}": value for key, value in config.items()}
    if credentials is not None:
        admin.update({f"secret.{key}": value for key, value in credentials.secrets.items()})
        if credentials.access_token:
            admin[_ACCESS_TOKEN] = credentials.access_token
    return _Values(admin=admin, arguments=arguments)


def _fill(template: str, values: _Values, *, encode: bool = False) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        text = str(values.get(name))
        if not (encode and _is_argument(name)):
            return text
        # The model's arguments cannot add path segments, query parameters or a host, nor
        # climb out of the path the template names.
        if text in _DOT_SEGMENTS:
            raise ArgumentRefused(f"argument {{{name}}} is a dot segment")
        query_at = template.find("?")
        if not text and (query_at < 0 or match.start() < query_at):
            # "/orders/{id}" with no id is "/orders/": the whole collection, not one order.
            raise ArgumentRefused(f"argument {{{name}}} is empty in the URL's path")
        return quote(text, safe="")

    return _PLACEHOLDER.sub(replace, template)


def _fill_json(template: Any, values: _Values) -> Any:
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole is not None:
            return values.get(whole.group(1))
        return _fill(template, values)
    if isinstance(template, dict):
        return {key: _fill_json(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill_json(item, values) for item in template]
    return template
