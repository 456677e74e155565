"""Test tools for the voice worker's tests: discovered by the worker process of the LiveKit
tests (`VA_WORKER_TOOL_PACKAGES=voice_worker_test_tools`) and used directly by the others."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from livekit.agents import RunContext

from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function

# The API key the tool-vault stand-in releases: it must never show up in logs or events.
PLANTED_SECRET = os.environ.get("VA_TEST_PLANTED_SECRET", "sk_live_PLANTED_test")


class Orders(BaseTool):
    """A test tool with an API key, an optional parameter, a read and a write."""

    metadata = ToolMetadata(name="orders", description="Order lookup", auth_type="api_key")

    @tool_function(idempotent=True)
    async def lookup_order(
        self,
        context: RunContext[Any],
        order_id: str,
        include_items: bool = False,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Look up an order by the number the caller reads out.

        Args:
            order_id: The order number.
            include_items: Whether to list the items too.
        """
        key = self.credentials.secrets["api_key"] if self.credentials else None
        return {"order_id": order_id, "status": "shipped", "authorized": key == PLANTED_SECRET}

    @tool_function(redact_arguments=["card_number"])
    async def refund_order(self, context: RunContext[Any], order_id: str, card_number: str) -> str:
        """Refund an order to a card."""
        return f"refund of {order_id} started"

    async def cancel_order(self, context: RunContext[Any], order_id: str) -> str:
        """Cancel an order."""
        return "cancelled"


class Flaky(BaseTool):
    """A test tool that misbehaves on purpose."""

    metadata = ToolMetadata(name="flaky", description="Misbehaves", timeout_seconds=0.2)
    calls: dict[str, int] = {}

    @tool_function(idempotent=True)
    async def slow_read(self, context: RunContext[Any]) -> str:
        """Never answers in time."""
        Flaky.calls["slow_read"] = Flaky.calls.get("slow_read", 0) + 1
        await asyncio.sleep(30)
        return "late"

    async def broken_write(self, context: RunContext[Any]) -> str:
        """Raises."""
        Flaky.calls["broken_write"] = Flaky.calls.get("broken_write", 0) + 1
        raise RuntimeError(f"upstream said no, key={PLANTED_SECRET}")

    async def slow_but_fine(self, context: RunContext[Any]) -> str:
        """Answers after a pause longer than the filler delay."""
        await asyncio.sleep(0.15)
        return "done"
