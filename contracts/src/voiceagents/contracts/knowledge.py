"""Knowledge-base search (`registry.v1.kb.search`, request/reply): voice worker -> registry.

The registry owns the articles (PostgreSQL); a worker asks it for the few passages that best
answer a caller's question. Only the `worker` NATS identity may send this request
(infra/nats/nats-server.conf), and it carries the call's grant: the registry searches only the
grant's organization, only while the call is live and its agent has the knowledge-base tool
bound and active, and only that binding's collections. A worker cannot choose what it searches,
so a compromised one reads no more than the calls it serves could.
"""

from __future__ import annotations

from typing import Literal

import msgspec

KB_SEARCH_SUBJECT = "registry.v1.kb.search"
# The voice worker's knowledge-base tool: a call may search only if its agent has it bound.
KB_TOOL_NAME = "knowledge_base"

# denied: the grant does not verify, has expired, its call has ended, or its agent has no
# active knowledge-base tool.
KbSearchErrorCode = Literal["bad_request", "denied", "unavailable"]


class KbSearchRequest(msgspec.Struct, frozen=True, kw_only=True):
    # The call grant from the call's dispatch metadata (`calls.CallGrantClaims`).
    grant: str
    query: str
    limit: int = 3


class KbPassage(msgspec.Struct, frozen=True, kw_only=True):
    """A short piece of one article, plain text (no Markdown), meant to be read out."""

    article_id: str
    title: str
    text: str
    score: float = 0.0


class KbSearchReply(msgspec.Struct, frozen=True, kw_only=True):
    passages: list[KbPassage] = []
    error: KbSearchErrorCode | None = None
