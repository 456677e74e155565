"""Tool machinery: `BaseTool` classes, their discovery and catalog, and the per-call tool list."""

from voiceagents.worker.tools.base import BaseTool, FunctionOptions, ToolMetadata, tool_function

__all__ = ["BaseTool", "FunctionOptions", "ToolMetadata", "tool_function"]
