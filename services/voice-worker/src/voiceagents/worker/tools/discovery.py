"""Finding the code tools a worker was built with, and describing them for the registry.

Every concrete `BaseTool` subclass defined in the configured packages (and their subpackages)
is a tool: dropping a module into `voiceagents.worker.tools.builtin` is all it takes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterable
from typing import TypeGuard

from livekit.agents.llm.utils import build_legacy_openai_schema

from voiceagents.contracts.tools import PlatformToolSpec, ToolFunctionSpec
from voiceagents.worker.tools.base import BaseTool
from voiceagents.worker.tools.execution import FunctionBinding, ToolRunner
from voiceagents.worker.tools.wrapping import wrap_method

BUILTIN_PACKAGE = "voiceagents.worker.tools.builtin"


class DuplicateToolError(ValueError):
    """Two tool classes claim the same name."""


def discover(packages: Iterable[str] = (BUILTIN_PACKAGE,)) -> dict[str, type[BaseTool]]:
    """Tool classes by tool name, from every module of `packages`."""
    found: dict[str, type[BaseTool]] = {}
    for package_name in packages:
        package = importlib.import_module(package_name)
        modules = [package]
        if hasattr(package, "__path__"):
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
                modules.append(importlib.import_module(info.name))
        for module in modules:
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if not _is_tool_class(cls) or cls.__module__ != module.__name__:
                    continue
                name = cls.metadata.name
                if name in found and found[name] is not cls:
                    raise DuplicateToolError(
                        f"tool name {name!r} is used by {found[name].__qualname__} "
                        f"and {cls.__qualname__}"
                    )
                found[name] = cls
    return found


def _is_tool_class(cls: type) -> TypeGuard[type[BaseTool]]:
    return (
        issubclass(cls, BaseTool)
        and cls is not BaseTool
        and not inspect.isabstract(cls)
        and hasattr(cls, "metadata")
    )


def function_specs(cls: type[BaseTool]) -> list[ToolFunctionSpec]:
    """Each function's name, description and parameter JSON Schema exactly as the model sees
    them (built by the same wrapper the calls use)."""
    runner = ToolRunner(report=lambda _: None)
    specs: list[ToolFunctionSpec] = []
    for info in cls.functions():
        binding = FunctionBinding(
            tool_name=cls.metadata.name, agent_tool_id="catalog", function=info.name
        )
        # Unbound: describe the signature without `self` by binding to a placeholder instance.
        bound = info.method.__get__(object.__new__(cls), cls)
        schema = build_legacy_openai_schema(
            wrap_method(bound, binding, runner, description=info.description or None),
            internally_tagged=True,
        )
        specs.append(
            ToolFunctionSpec(
                name=info.name,
                description=schema["description"],
                parameters=schema["parameters"],
                oauth_scopes=list(info.options.oauth_scopes),
                idempotent=info.options.idempotent,
                redact_arguments=list(info.options.redact_arguments),
            )
        )
    return specs


def catalog(tools: dict[str, type[BaseTool]]) -> list[PlatformToolSpec]:
    """The platform tool specs a worker reports with `registry.v1.catalog.sync`."""
    return [
        PlatformToolSpec(
            name=cls.metadata.name,
            description=cls.metadata.description,
            kind="code",
            config_schema=dict(cls.metadata.config_schema),
            auth_type=cls.metadata.auth_type,
            oauth_provider=cls.metadata.oauth_provider,
            functions=function_specs(cls),
            timeout_seconds=cls.metadata.timeout_seconds,
            system=cls.metadata.system,
        )
        for cls in sorted(tools.values(), key=lambda cls: cls.metadata.name)
    ]
