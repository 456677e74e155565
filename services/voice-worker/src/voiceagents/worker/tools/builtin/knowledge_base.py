"""Knowledge base: answers the caller's questions from the organization's help articles.

The articles live in the registry (admins upload them over its REST API); the worker asks the
registry for the best passages over NATS (`registry.v1.kb.search`, request/reply) with the
call's grant. The registry decides what is searched from the grant: the call's organization,
the agent tool's `collections` when set, and nothing once the call has ended. This is the one
tool whose answers depend on the registry being up: without it the caller hears that the
knowledge base is unavailable, and the call goes on.
"""

from __future__ import annotations

from typing import Any

import msgspec
from livekit.agents import RunContext
from nats.errors import Error as NatsError

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.knowledge import (
    KB_SEARCH_SUBJECT,
    KB_TOOL_NAME,
    KbSearchReply,
    KbSearchRequest,
)
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function

UNAVAILABLE = (
    "I'm sorry, the knowledge base is unavailable right now. "
    "Is there anything else I can help you with?"
)
NOTHING_FOUND = "I couldn't find anything about that in our help articles."
# Below the tool's own timeout, so a slow registry gets the sentence above, not a retry.
SEARCH_TIMEOUT_SECONDS = 2.0


class KnowledgeBase(BaseTool):
    metadata = ToolMetadata(
        name=KB_TOOL_NAME,
        description="Answers callers' questions from the organization's help articles.",
        config_schema={
            "type": "object",
            "properties": {
                "collections": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
                    "description": "Search only these collections (all when empty).",
                    "default": [],
                },
                "max_passages": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 5,
                    "description": "How many passages a search returns at most.",
                    "default": 3,
                },
            },
            "additionalProperties": False,
        },
        timeout_seconds=3.0,
    )

    @tool_function(idempotent=True)
    async def search_knowledge_base(self, context: RunContext[Any], query: str) -> dict[str, Any]:
        """Search the organization's help articles for the answer to the caller's question.
        Answer only from the passages returned, briefly and in your own words.

        Args:
            query: The caller's question, or its key words, e.g. "blender warranty".
        """
        state = _call_state(context)
        nc = getattr(state, "nats", None)
        grant = getattr(state, "grant", "")
        if nc is None or not grant:
            return {"error": "unavailable", "say_to_caller": UNAVAILABLE}
        request = KbSearchRequest(
            grant=grant, query=query, limit=int(self.config.get("max_passages", 3))
        )
        try:
            msg = await nc.request(
                KB_SEARCH_SUBJECT, encode(request), timeout=SEARCH_TIMEOUT_SECONDS
            )
            reply = decode(msg.data, KbSearchReply)
        except (NatsError, TimeoutError, msgspec.ValidationError, msgspec.DecodeError):
            return {"error": "unavailable", "say_to_caller": UNAVAILABLE}
        if reply.error is not None:
            return {"error": "unavailable", "say_to_caller": UNAVAILABLE}
        if not reply.passages:
            return {"found": False, "answer": NOTHING_FOUND}
        return {
            "found": True,
            "passages": [{"title": p.title, "text": p.text} for p in reply.passages],
        }


def _call_state(context: RunContext[Any]) -> Any:
    try:
        return context.userdata
    except ValueError:  # a session without userdata
        return None
