"""Runtime configuration that calls run on, projected by the registry into NATS KV.

Bucket `agent-config`: key = agent id, value = AgentRuntimeConfig.
Bucket `phone-numbers`: key = E.164 digits without "+", value = PhoneNumberEntry.
Consumers never replace a newer `version` with an older one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from voiceagents.contracts.tools import AuthType, ToolFunctionSpec, ToolKind

AGENT_CONFIG_BUCKET = "agent-config"
PHONE_NUMBERS_BUCKET = "phone-numbers"

DEFAULT_GREETING = "Hello, this is {agent_name}. How can I help you today?"


def phone_number_key(e164: str) -> str:
    """KV key of an E.164 number: its digits ("+14155550100" -> "14155550100")."""
    return e164.removeprefix("+")


class ToolBinding(msgspec.Struct, frozen=True, kw_only=True):
    """One tool bound to an agent, with non-secret config and only the *enabled* functions."""

    agent_tool_id: str
    tool_name: str
    kind: ToolKind = "code"
    description: str = ""
    config: dict[str, Any] = {}
    functions: list[ToolFunctionSpec] = []
    auth_type: AuthType = "none"
    timeout_seconds: float = 10.0


class AgentRuntimeConfig(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    org_id: str
    version: int
    name: str
    system_prompt: str
    greeting: str = DEFAULT_GREETING
    greeting_interruptible: bool = False
    voice: str = "Puck"
    model: str = "gemini-2.5-flash-native-audio-preview-12-2025"
    language: str = "en-US"
    is_active: bool = True
    transfer_number: str | None = None
    max_concurrent_calls: int | None = None
    tools: list[ToolBinding] = []
    updated_at: datetime | None = None

    def greeting_text(self) -> str:
        """The greeting exactly as the caller hears it."""
        return self.greeting.replace("{agent_name}", self.name)


class PhoneNumberEntry(msgspec.Struct, frozen=True, kw_only=True):
    phone_number: str
    agent_id: str
    org_id: str
    version: int
