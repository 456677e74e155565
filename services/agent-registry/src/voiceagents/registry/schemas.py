"""Request and response bodies of the REST API (msgspec Structs; the OpenAPI document is
generated from them). Requests reject unknown fields, so a misspelt field is an error rather
than a silently ignored change."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from voiceagents.contracts.agents import DEFAULT_GREETING
from voiceagents.contracts.tools import AuthType, HttpMethod, ToolFunctionSpec, ToolKind

E164 = Annotated[
    str,
    Meta(
        pattern=r"^\+[1-9][0-9]{1,14}$",
        description="E.164 phone number: '+', country code, subscriber number (max 15 digits)",
        examples=["+14155550100"],
    ),
]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Description = Annotated[str, Meta(max_length=4000)]
SystemPrompt = Annotated[str, Meta(min_length=1, max_length=32_768)]
Greeting = Annotated[str, Meta(min_length=1, max_length=2000)]
ShortText = Annotated[str, Meta(min_length=1, max_length=100)]
MaxCalls = Annotated[int, Meta(ge=1, le=10_000)]
Version = Annotated[int, Meta(ge=1)]
ToolName = Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
FunctionName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
JsonObject = dict[str, Any]

DEFAULT_VOICE = "Puck"
DEFAULT_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
DEFAULT_LANGUAGE = "en-US"

AuthStatus = Literal["not_required", "disconnected", "connected", "expired"]


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# -- organizations and keys ----------------------------------------------------------------


class OrganizationCreate(_Request):
    name: Name


class Organization(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: datetime


class ApiKeyCreate(_Request):
    name: Name
    role: Literal["platform_admin", "org_admin"] = "org_admin"


class ApiKeyCreated(msgspec.Struct, kw_only=True):
    """The only time the key is shown: store it now."""

    id: str
    key: str
    name: str
    role: str
    organization_id: str | None
    created_at: datetime


class ApiKey(msgspec.Struct, kw_only=True):
    """A key as listed: who and when, never the key or its hash."""

    id: str
    name: str
    role: str
    organization_id: str | None
    created_at: datetime
    revoked_at: datetime | None


# -- agents ------------------------------------------------------------------------------------


class AgentCreate(_Request):
    organization_id: str
    name: Name
    system_prompt: SystemPrompt
    description: Description = ""
    greeting: Greeting = DEFAULT_GREETING
    greeting_interruptible: bool = False
    voice: ShortText = DEFAULT_VOICE
    model: ShortText = DEFAULT_MODEL
    language: ShortText = DEFAULT_LANGUAGE
    phone_number: E164 | None = None
    transfer_number: E164 | None = None
    max_concurrent_calls: MaxCalls | None = None
    is_active: bool = True


class AgentUpdate(_Request):
    """Only the fields sent change. `version` (or `If-Match`) makes the update conditional."""

    name: Name | UnsetType = UNSET
    system_prompt: SystemPrompt | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    greeting: Greeting | UnsetType = UNSET
    greeting_interruptible: bool | UnsetType = UNSET
    voice: ShortText | UnsetType = UNSET
    model: ShortText | UnsetType = UNSET
    language: ShortText | UnsetType = UNSET
    phone_number: E164 | UnsetType | None = UNSET
    transfer_number: E164 | UnsetType | None = UNSET
    max_concurrent_calls: MaxCalls | UnsetType | None = UNSET
    is_active: bool | UnsetType = UNSET
    version: Version | UnsetType = UNSET


class Agent(msgspec.Struct, kw_only=True):
    id: str
    organization_id: str
    name: str
    description: str
    system_prompt: str
    greeting: str
    greeting_interruptible: bool
    voice: str
    model: str
    language: str
    phone_number: str | None
    transfer_number: str | None
    max_concurrent_calls: int | None
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class AgentPage(msgspec.Struct, kw_only=True):
    items: list[Agent]
    # Pass as `cursor` to get the next page; null on the last page.
    next_cursor: str | None = None


# -- platform tools -----------------------------------------------------------------------------


class HttpFunctionCreate(_Request):
    name: FunctionName
    description: Annotated[str, Meta(min_length=1, max_length=2000)]
    method: HttpMethod
    # `{param}` for a parameter of this function, `{config.key}` for a key of the tool's config.
    url_template: Annotated[str, Meta(min_length=1, max_length=2000)]
    headers_template: dict[str, str] = {}
    body_template: JsonObject | None = None
    parameters: JsonObject = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    oauth_scopes: list[str] = []
    idempotent: bool = False
    redact_arguments: list[str] = []


class PlatformToolCreate(_Request):
    """A declarative HTTP tool, run by the voice worker's generic executor."""

    name: ToolName
    description: Annotated[str, Meta(min_length=1, max_length=2000)]
    functions: Annotated[list[HttpFunctionCreate], Meta(min_length=1, max_length=64)]
    config_schema: JsonObject = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    auth_type: AuthType = "none"
    oauth_provider: str | None = None
    timeout_seconds: Annotated[float, Meta(gt=0, le=60)] = 10.0


class PlatformTool(msgspec.Struct, kw_only=True):
    name: str
    description: str
    kind: ToolKind
    config_schema: JsonObject
    auth_type: AuthType
    oauth_provider: str | None
    functions: list[ToolFunctionSpec]
    timeout_seconds: float
    # On every call whatever the agent binds (end call, transfer); bind it only to configure it.
    system: bool
    # False for a code tool no voice worker reported in its latest catalog.
    available: bool
    version: int
    updated_at: datetime


# -- agent tools --------------------------------------------------------------------------------


class AgentToolCreate(_Request):
    agent_id: str
    tool_name: ToolName
    # Non-secret settings, validated against the tool's config schema.
    config: JsonObject = {}
    unselected_functions: list[str] = []
    is_active: bool = True


class AgentToolUpdate(_Request):
    config: JsonObject | UnsetType = UNSET
    unselected_functions: list[str] | UnsetType = UNSET
    is_active: bool | UnsetType = UNSET
    version: Version | UnsetType = UNSET


class AgentTool(msgspec.Struct, kw_only=True):
    """The safe tier: configuration and status only, never a token, key or secret."""

    id: str
    agent_id: str
    organization_id: str
    tool_name: str
    config: JsonObject
    unselected_functions: list[str]
    is_active: bool
    auth_status: AuthStatus
    version: int
    created_at: datetime
    updated_at: datetime


# -- call log -----------------------------------------------------------------------------------


class TranscriptLine(msgspec.Struct, kw_only=True):
    role: str
    text: str
    at: datetime


class ToolInvocation(msgspec.Struct, kw_only=True):
    tool_name: str
    function: str
    arguments: JsonObject
    outcome: str
    duration_ms: float
    error: str | None = None
    at: datetime


class Transfer(msgspec.Struct, kw_only=True):
    to_number: str
    reason: str
    at: datetime
    # "failed": Twilio did not make it and the caller stayed with the agent (`error`: the type).
    # Entries logged before outcomes were recorded read as "ok".
    outcome: Literal["ok", "failed"] = "ok"
    error: str = ""


class CallSummary(msgspec.Struct, kw_only=True):
    call_sid: str
    organization_id: str
    agent_id: str
    from_number: str | None
    to_number: str | None
    status: str
    ended_by: str | None
    started_at: datetime
    ended_at: datetime | None
    duration_seconds: float | None


class Call(CallSummary, kw_only=True):
    room: str | None
    reason: str | None
    worker_id: str | None
    setup_ms: float | None
    agent_joined_at: datetime | None
    transcript: list[TranscriptLine]
    tool_invocations: list[ToolInvocation]
    transfers: list[Transfer]


class CallPage(msgspec.Struct, kw_only=True):
    items: list[CallSummary]
    next_cursor: str | None = None
