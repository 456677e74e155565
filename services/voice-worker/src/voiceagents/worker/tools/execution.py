"""How every tool call runs, code or HTTP: a timeout, one retry when the function is a read, a
short spoken filler when it is slow, a call event, and — instead of silence or a stack trace —
a result that gives the model a caller-safe sentence to say when anything goes wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from livekit.agents import RunContext

from voiceagents.contracts.calls import ToolOutcome
from voiceagents.worker.tools.ssrf import RequestRefused

log = structlog.get_logger("voiceagents.worker.tools")

REDACTED = "[redacted]"

# What the caller hears when a tool fails; the model gets it as `say_to_caller`.
FAILED_SENTENCE = (
    "I'm sorry, I couldn't complete that just now. Is there anything else I can help you with?"
)
UNAVAILABLE_SENTENCE = (
    "I'm sorry, that service isn't available right now, so I can't do that on this call. "
    "Is there anything else I can help you with?"
)


@dataclass(frozen=True)
class FunctionBinding:
    """One enabled function of one agent tool, as this call runs it."""

    tool_name: str
    agent_tool_id: str
    function: str
    timeout_seconds: float = 10.0
    idempotent: bool = False
    redact_arguments: frozenset[str] = frozenset()
    # Set when the tool cannot run on this call (its credentials were not released): the code
    # tool-vault gave (`not_connected`, `refresh_failed`, ...) or `unavailable`.
    unavailable: str | None = None


@dataclass(frozen=True)
class ToolInvocation:
    """What a finished tool call reports; arguments are already redacted."""

    binding: FunctionBinding
    arguments: dict[str, Any]
    outcome: ToolOutcome
    duration_ms: float
    error: str | None = None


def redact(arguments: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    return {key: (REDACTED if key in names else value) for key, value in arguments.items()}


def failure_result(outcome: ToolOutcome, sentence: str) -> str:
    """The tool result the model gets on failure: what happened, and what to tell the caller."""
    return model_text({"error": outcome, "say_to_caller": sentence})


def model_text(result: Any) -> str:
    """A tool's result as the model reads it: text as is, anything else as JSON."""
    if isinstance(result, str):
        return result
    try:
        return msgspec.json.encode(result).decode()
    except TypeError:
        return str(result)


class ToolRunner:
    """Runs the tool calls of one phone call."""

    def __init__(
        self,
        *,
        report: Callable[[ToolInvocation], None],
        filler: Callable[[RunContext[Any]], None] | None = None,
        filler_after_seconds: float = 1.0,
    ) -> None:
        self._report = report
        self._filler = filler
        self._filler_after = filler_after_seconds

    async def run(
        self,
        binding: FunctionBinding,
        context: RunContext[Any] | None,
        arguments: Mapping[str, Any],
        call: Callable[[], Awaitable[Any]],
    ) -> str:
        started = time.perf_counter()
        if binding.unavailable is not None:
            self._finish(binding, arguments, started, "unavailable", binding.unavailable)
            return failure_result("unavailable", UNAVAILABLE_SENTENCE)

        filler = None
        if self._filler is not None and context is not None:
            filler = asyncio.get_running_loop().call_later(
                self._filler_after, self._filler, context
            )
        try:
            attempts = 2 if binding.idempotent else 1
            for attempt in range(attempts):
                try:
                    async with asyncio.timeout(binding.timeout_seconds):
                        result = await call()
                except TimeoutError:
                    outcome: ToolOutcome = "timeout"
                    error = f"no result within {binding.timeout_seconds:g} s"
                except RequestRefused:
                    outcome, error = "refused", "RequestRefused"
                except Exception as exc:  # any tool bug must end as a sentence, not silence
                    outcome, error = "error", type(exc).__name__
                else:
                    self._finish(binding, arguments, started, "ok", None)
                    return model_text(result)
                log.warning(
                    "tool call failed",
                    tool=binding.tool_name,
                    function=binding.function,
                    outcome=outcome,
                    error=error,
                    attempt=attempt + 1,
                    attempts=attempts,
                )
                if outcome == "refused":
                    break  # the SSRF guard's answer does not change on a retry
            self._finish(binding, arguments, started, outcome, error)
            return failure_result(outcome, FAILED_SENTENCE)
        finally:
            if filler is not None:
                filler.cancel()

    def _finish(
        self,
        binding: FunctionBinding,
        arguments: Mapping[str, Any],
        started: float,
        outcome: ToolOutcome,
        error: str | None,
    ) -> None:
        self._report(
            ToolInvocation(
                binding=binding,
                arguments=redact(arguments, binding.redact_arguments),
                outcome=outcome,
                duration_ms=(time.perf_counter() - started) * 1000,
                error=error,
            )
        )
