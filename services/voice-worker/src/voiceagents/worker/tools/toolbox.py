"""The tool list of one call, built once before the model session starts.

Only what the agent's runtime config lists is built: active bindings with their *enabled*
functions (the registry has already removed `unselected_functions`). A tool that cannot run on
this call — tool-vault did not release its credentials, or this worker lacks its code — keeps its
functions in the list, answering "unavailable", so the model can tell the caller instead of
guessing; the list never changes mid-call (changing Gemini's tools means reconnecting it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from livekit.agents import RunContext, llm
from livekit.agents.llm import FunctionTool, RawFunctionTool, function_tool

from voiceagents.contracts.agents import ToolBinding
from voiceagents.contracts.tools import ToolFunctionSpec
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.base import BaseTool
from voiceagents.worker.tools.execution import FunctionBinding, ToolRunner
from voiceagents.worker.tools.http import HttpToolExecutor
from voiceagents.worker.tools.wrapping import wrap_http, wrap_method

log = structlog.get_logger("voiceagents.worker.tools")


@dataclass
class CallTools:
    tools: list[llm.Tool] = field(default_factory=list)
    # Tool instances of this call (they hold its credentials), by agent tool id.
    instances: dict[str, BaseTool] = field(default_factory=dict)
    # The enabled functions of code tools, wrapped as the model calls them (through the runner),
    # by agent tool id and function name.
    functions: dict[tuple[str, str], FunctionTool[Any, Any]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [tool.id for tool in self.tools]

    def enabled(self, cls: type[BaseTool], function: str) -> FunctionTool[Any, Any] | None:
        """`function` of a `cls` tool the agent bound, if it enabled it: what one tool may call
        for the agent (call_control's after-hours callback), with the same runner, timeout and
        `tool_invoked` event as when the model calls it."""
        for agent_tool_id, instance in self.instances.items():
            tool = self.functions.get((agent_tool_id, function))
            if isinstance(instance, cls) and tool is not None:
                return tool
        return None


def build_call_tools(
    bindings: list[ToolBinding],
    classes: Mapping[str, type[BaseTool]],
    credentials: Mapping[str, ToolCredentials],
    unavailable: Mapping[str, str],
    runner: ToolRunner,
    http: HttpToolExecutor | None,
) -> CallTools:
    built = CallTools()
    for binding in bindings:
        # Only tools that need credentials can lack them.
        reason = None if binding.auth_type == "none" else unavailable.get(binding.agent_tool_id)
        if binding.kind == "http":
            _add_http(built, binding, credentials, reason, runner, http)
            continue
        cls = classes.get(binding.tool_name)
        if cls is None:
            log.warning("agent uses a tool this worker does not have", tool=binding.tool_name)
            for spec in binding.functions:
                _add(built, _unavailable_tool(spec, _binding(binding, spec, "unavailable"), runner))
            continue
        instance = cls(config=binding.config, credentials=credentials.get(binding.agent_tool_id))
        built.instances[binding.agent_tool_id] = instance
        infos = {info.name: info for info in cls.functions()}
        for spec in binding.functions:
            info = infos.get(spec.name)
            if info is None:
                log.warning("function not in tool", tool=binding.tool_name, function=spec.name)
                continue
            function = FunctionBinding(
                tool_name=binding.tool_name,
                agent_tool_id=binding.agent_tool_id,
                function=spec.name,
                timeout_seconds=info.options.timeout_seconds or binding.timeout_seconds,
                idempotent=info.options.idempotent,
                redact_arguments=frozenset(
                    (*info.options.redact_arguments, *spec.redact_arguments)
                ),
                unavailable=reason,
            )
            method = info.method.__get__(instance, cls)
            tool = wrap_method(method, function, runner, description=info.description or None)
            built.functions[binding.agent_tool_id, spec.name] = tool
            _add(built, tool)
    return built


def _binding(binding: ToolBinding, spec: ToolFunctionSpec, reason: str | None) -> FunctionBinding:
    return FunctionBinding(
        tool_name=binding.tool_name,
        agent_tool_id=binding.agent_tool_id,
        function=spec.name,
        timeout_seconds=binding.timeout_seconds,
        idempotent=spec.idempotent,
        redact_arguments=frozenset(spec.redact_arguments),
        unavailable=reason,
    )


def _add_http(
    built: CallTools,
    binding: ToolBinding,
    credentials: Mapping[str, ToolCredentials],
    reason: str | None,
    runner: ToolRunner,
    http: HttpToolExecutor | None,
) -> None:
    for spec in binding.functions:
        if http is None or spec.http is None:
            _add(built, _unavailable_tool(spec, _binding(binding, spec, "unavailable"), runner))
            continue
        call = partial(http.execute, spec, binding.config, credentials.get(binding.agent_tool_id))
        _add(built, wrap_http(spec, _binding(binding, spec, reason), runner, call))


def _unavailable_tool(
    spec: ToolFunctionSpec, binding: FunctionBinding, runner: ToolRunner
) -> RawFunctionTool[Any, Any]:
    async def tool(raw_arguments: dict[str, Any], context: RunContext[Any]) -> str:
        return await runner.run(binding, context, raw_arguments, _never)

    return function_tool(
        tool,
        raw_schema={
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        },
    )


async def _never() -> None:
    raise RuntimeError("an unavailable tool is never called")


def _add(built: CallTools, tool: llm.Tool) -> None:
    if tool.id in built.names:
        # Function names are the model's handles; two tools with one name would be ambiguous.
        log.warning("duplicate function name skipped", function=tool.id)
        return
    built.tools.append(tool)
