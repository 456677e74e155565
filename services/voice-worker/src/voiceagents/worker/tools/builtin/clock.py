"""A small demo tool: the current date and time in the agent's time zone."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from livekit.agents import RunContext

from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function


class Clock(BaseTool):
    metadata = ToolMetadata(
        name="clock",
        description="Tells the current date and time.",
        config_schema={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone, e.g. Europe/Berlin",
                    "default": "UTC",
                }
            },
        },
        timeout_seconds=2.0,
    )

    @tool_function(idempotent=True)
    async def current_time(self, context: RunContext[Any], timezone: str | None = None) -> str:
        """The current local time, spoken as hours and minutes.

        Args:
            timezone: IANA time zone to use instead of the configured one.
        """
        return self._now(timezone).strftime("%H:%M")

    @tool_function(idempotent=True)
    async def current_date(self, context: RunContext[Any]) -> str:
        """Today's date, e.g. "Tuesday, 24 November 2026"."""
        return self._now(None).strftime("%A, %d %B %Y")

    def _now(self, timezone: str | None) -> datetime:
        name = timezone or str(self.config.get("timezone", "UTC"))
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        return datetime.now(zone)
