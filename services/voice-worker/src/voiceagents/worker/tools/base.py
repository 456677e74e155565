"""What a code tool is: a `BaseTool` subclass with metadata and async methods taking a `RunContext`.

Every public async method whose first parameter (after `self`) is a `RunContext` is one
*function* the model can call. Its signature (types, defaults, `Optional`) is the function's
parameter schema and its docstring is the description. `@tool_function(...)` adds what the
signature cannot say: OAuth scopes, whether a retry is safe, which arguments to redact, a timeout.

A tool instance lives for one call: it is built with the agent tool's non-secret config and the
credentials tool-vault released for this call, and dropped when the call ends.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, get_type_hints

from docstring_parser import parse_from_object
from livekit.agents.llm.utils import is_context_type

from voiceagents.contracts.tools import AuthType
from voiceagents.contracts.toolvault import ToolCredentials

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS_ATTR = "__voiceagents_function_options__"


@dataclass(frozen=True)
class FunctionOptions:
    """Per-function facts the signature cannot express."""

    oauth_scopes: tuple[str, ...] = ()
    # Safe to run twice (a read): retried once after a timeout or an error.
    idempotent: bool = False
    # Argument names whose values never reach a log or a call event.
    redact_arguments: tuple[str, ...] = ()
    # Overrides the tool's timeout for this function.
    timeout_seconds: float | None = None


def tool_function(
    *,
    oauth_scopes: Sequence[str] = (),
    idempotent: bool = False,
    redact_arguments: Sequence[str] = (),
    timeout_seconds: float | None = None,
) -> Callable[[F], F]:
    """Declare a tool method's scopes, retry safety, redacted arguments and timeout."""

    def mark(method: F) -> F:
        setattr(
            method,
            _OPTIONS_ATTR,
            FunctionOptions(
                oauth_scopes=tuple(oauth_scopes),
                idempotent=idempotent,
                redact_arguments=tuple(redact_arguments),
                timeout_seconds=timeout_seconds,
            ),
        )
        return method

    return mark


@dataclass(frozen=True)
class ToolMetadata:
    """What the registry shows admins about a tool and what tool-vault needs to connect it."""

    name: str
    description: str
    config_schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    auth_type: AuthType = "none"
    # Which tool-vault OAuth provider connects this tool (auth_type="oauth2").
    oauth_provider: str | None = None
    timeout_seconds: float = 10.0
    # A system tool: the worker gives it to every call, whatever the agent has bound.
    system: bool = False


@dataclass(frozen=True)
class FunctionInfo:
    """One callable function of a tool class, found by inspection."""

    name: str
    description: str
    method: Callable[..., Any]
    options: FunctionOptions


class BaseTool:
    """Base class of every code tool. Subclasses set `metadata` and define async functions."""

    metadata: ClassVar[ToolMetadata]

    def __init__(
        self, *, config: Mapping[str, Any], credentials: ToolCredentials | None = None
    ) -> None:
        self.config: Mapping[str, Any] = config
        # Per-call memory only; never logged (the repr below leaves it out).
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"<{type(self).__name__} tool {self.metadata.name!r}>"

    @classmethod
    @functools.cache
    def functions(cls) -> tuple[FunctionInfo, ...]:
        """The class's functions in definition order. Computed once per class: reading type
        hints and docstrings costs milliseconds, and every call builds its tools from these."""
        found: list[FunctionInfo] = []
        for name, member in vars_in_mro(cls):
            if name.startswith("_") or not inspect.iscoroutinefunction(member):
                continue
            if not _takes_run_context(member):
                continue
            found.append(
                FunctionInfo(
                    name=name,
                    description=(parse_from_object(member).description or "").strip(),
                    method=member,
                    options=getattr(member, _OPTIONS_ATTR, FunctionOptions()),
                )
            )
        return tuple(found)


def vars_in_mro(cls: type) -> list[tuple[str, Any]]:
    """Attributes of `cls` and its bases (subclass first wins), in definition order."""
    seen: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        seen.update(vars(klass))
    return list(seen.items())


def _takes_run_context(method: Callable[..., Any]) -> bool:
    parameters = list(inspect.signature(method).parameters.values())
    if len(parameters) < 2:
        return False
    hints = get_type_hints(method, include_extras=True)
    hint = hints.get(parameters[1].name)
    return hint is not None and is_context_type(hint, allow_subclasses=True)
