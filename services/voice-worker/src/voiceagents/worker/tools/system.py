"""System tools: what every call can do, whatever the agent has bound — end the call, hand the
caller to a person (tools whose `ToolMetadata.system` is set: `call_control`).

For each system tool the agent has not bound, the worker adds a binding with all its functions;
an agent binds one only to configure it (transfer routing, say). System tools act with the
worker's own Twilio account (its settings), never with tool-vault's secrets, and an agent's
config never decides where those credentials go: `twilio_api_base_url` is the worker's setting
(only in dev mode may an agent's config set it, for tests). Without Twilio credentials the worker
cannot transfer, so `transfer_to_human` is left out, whether the worker added the binding or the
agent bound the tool itself: the model then says it cannot transfer instead of promising a
hand-off that never happens.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from voiceagents.contracts.agents import ToolBinding
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.settings import Settings
from voiceagents.worker.tools.base import BaseTool
from voiceagents.worker.tools.discovery import function_specs

END_CALL_FUNCTION = "end_call"
TRANSFER_FUNCTION = "transfer_to_human"
TWILIO_URL_KEY = "twilio_api_base_url"


def system_bindings(classes: Mapping[str, type[BaseTool]]) -> list[ToolBinding]:
    """A binding of every system tool with all its functions (built once per process)."""
    bindings: list[ToolBinding] = []
    for name, cls in sorted(classes.items()):
        if not cls.metadata.system:
            continue
        bindings.append(
            ToolBinding(
                agent_tool_id=f"system-{name}",
                tool_name=name,
                description=cls.metadata.description,
                functions=function_specs(cls),
                timeout_seconds=cls.metadata.timeout_seconds,
            )
        )
    return bindings


def with_system_tools(
    bindings: list[ToolBinding], system: list[ToolBinding], settings: Settings
) -> tuple[list[ToolBinding], dict[str, ToolCredentials]]:
    """The agent's bindings plus the system tools it did not bind, every system binding with the
    worker's Twilio base URL (and without `transfer_to_human` when the worker has no Twilio
    account); and the worker's Twilio credentials for each system binding."""
    bound = {binding.tool_name for binding in bindings}
    system_names = {binding.tool_name for binding in system}
    secrets = settings.twilio_secrets
    result: list[ToolBinding] = []
    credentials: dict[str, ToolCredentials] = {}
    for binding in [*bindings, *(b for b in system if b.tool_name not in bound)]:
        if binding.tool_name in system_names:
            config = dict(binding.config)
            if not (settings.dev_mode and TWILIO_URL_KEY in config):
                config[TWILIO_URL_KEY] = settings.twilio_api_base_url
            functions = binding.functions
            if secrets is None:
                functions = [f for f in functions if f.name != TRANSFER_FUNCTION]
            else:
                credentials[binding.agent_tool_id] = ToolCredentials(
                    agent_tool_id=binding.agent_tool_id, kind="api_key", secrets=secrets
                )
            binding = msgspec.structs.replace(binding, config=config, functions=functions)
        result.append(binding)
    return result, credentials
