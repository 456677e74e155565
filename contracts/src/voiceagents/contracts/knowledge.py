"""Knowledge-base search (`registry.v1.kb.search`, request/reply): voice worker -> registry.

The registry owns the articles (PostgreSQL); a worker asks it for the few passages that best
answer a caller's question, for the call's organization only. Only the `worker` NATS identity
may send this request (infra/nats/nats-server.conf), and the organization comes from the call,
never from the model.
"""

from __future__ import annotations

from typing import Literal

import msgspec

KB_SEARCH_SUBJECT = "registry.v1.kb.search"

KbSearchErrorCode = Literal["bad_request", "unavailable"]


class KbSearchRequest(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    query: str
    # Only articles in these collections; empty = every collection of the organization.
    collections: list[str] = []
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
