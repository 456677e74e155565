"""Turning tool functions into LiveKit function tools the model can call.

LiveKit builds a function's JSON Schema from its signature, so a bound method cannot be handed
over as it is (`self` would leak into the schema) and a generic `**kwargs` wrapper would erase
the parameters. The wrapper built here carries the method's exact signature minus `self` —
types, defaults and `Optional` kept — and its docstring, then hands the call to the `ToolRunner`.
Declarative HTTP functions have no Python signature: they become raw-schema tools whose schema
is the one stored in the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, get_type_hints

from livekit.agents import RunContext
from livekit.agents.llm import FunctionTool, RawFunctionTool, function_tool

from voiceagents.contracts.tools import ToolFunctionSpec
from voiceagents.worker.tools.execution import FunctionBinding, ToolRunner

HttpCall = Callable[[Mapping[str, Any]], Awaitable[Any]]


def wrap_method(
    method: Callable[..., Awaitable[Any]],
    binding: FunctionBinding,
    runner: ToolRunner,
    *,
    description: str | None = None,
) -> FunctionTool[Any, Any]:
    """A function tool with `method`'s signature (a bound method: `self` already gone)."""
    signature = inspect.signature(method)
    parameters = list(signature.parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) for p in parameters):
        raise TypeError(f"{binding.function}: tool functions take named parameters only")
    names = [p.name for p in parameters]
    context_name = names[0]
    hints = get_type_hints(method, include_extras=True)

    async def tool(*args: Any, **kwargs: Any) -> Any:
        # livekit-agents calls with the signature's own binding (positional or keyword); names
        # are mapped by hand because `Signature.bind` would be most of this wrapper's cost.
        arguments = dict(zip(names, args, strict=False))
        arguments.update(kwargs)
        context = arguments.pop(context_name)
        return await runner.run(binding, context, arguments, lambda: method(context, **arguments))

    tool.__signature__ = signature  # type: ignore[attr-defined]
    tool.__annotations__ = {name: hints[name] for name in signature.parameters if name in hints}
    tool.__name__ = tool.__qualname__ = binding.function
    tool.__doc__ = method.__doc__
    tool.__module__ = method.__module__
    return function_tool(tool, name=binding.function, description=description)


def wrap_http(
    spec: ToolFunctionSpec, binding: FunctionBinding, runner: ToolRunner, call: HttpCall
) -> RawFunctionTool[Any, Any]:
    """A raw-schema function tool for a declarative HTTP function."""

    async def tool(raw_arguments: dict[str, Any], context: RunContext[Any]) -> Any:
        return await runner.run(binding, context, raw_arguments, lambda: call(raw_arguments))

    tool.__name__ = tool.__qualname__ = binding.function
    return function_tool(
        tool,
        raw_schema={
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        },
    )
