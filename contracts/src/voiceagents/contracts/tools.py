"""Tool catalog: what a tool is and what its functions take, as voice workers report it
(`registry.v1.catalog.sync`) and as the registry serves it. No secrets ever live here."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

CATALOG_SYNC_SUBJECT = "registry.v1.catalog.sync"

ToolKind = Literal["code", "http"]
AuthType = Literal["none", "oauth2", "api_key"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpRequestTemplate(msgspec.Struct, frozen=True, kw_only=True):
    """How a declarative HTTP function calls its API. Templates use `{name}` placeholders that
    reference the function's parameters or the agent tool's config keys (`{config.key}`)."""

    method: HttpMethod
    url_template: str
    headers_template: dict[str, str] = {}
    body_template: dict[str, Any] | None = None


class ToolFunctionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One function the model can call: name, description and JSON Schema of its parameters."""

    name: str
    description: str
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    # OAuth scopes this function needs; tool-vault asks only for those of enabled functions.
    oauth_scopes: list[str] = []
    # Safe to retry once after a timeout (reads are; bookings are not).
    idempotent: bool = False
    # Argument names whose values are replaced by "[redacted]" in call events and logs.
    redact_arguments: list[str] = []
    http: HttpRequestTemplate | None = None


class PlatformToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool definition available to every organization."""

    name: str
    description: str
    kind: ToolKind = "code"
    config_schema: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    auth_type: AuthType = "none"
    # Which OAuth provider (tool-vault configuration) connects this tool, when auth_type=oauth2.
    oauth_provider: str | None = None
    functions: list[ToolFunctionSpec] = []
    timeout_seconds: float = 10.0
    # A system tool (end the call, transfer): every call has it, bound or not (a binding only
    # adds config).
    system: bool = False


class CatalogSyncRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A voice worker reports the code tools it was built with."""

    worker_id: str
    tools: list[PlatformToolSpec]
    sent_at: datetime | None = None


class CatalogSyncReply(msgspec.Struct, frozen=True, kw_only=True):
    upserted: list[str] = []
    # Code tools the registry knew but this worker no longer reports: kept, marked unavailable.
    marked_unavailable: list[str] = []
    error: str | None = None
