"""The knowledge-search messages survive the wire and tolerate newer senders."""

from __future__ import annotations

import pytest

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.knowledge import KbPassage, KbSearchReply, KbSearchRequest

pytestmark = pytest.mark.unit


def test_a_search_and_its_reply_round_trip() -> None:
    request = KbSearchRequest(grant="g.r.s", query="warranty", limit=2)
    reply = KbSearchReply(passages=[KbPassage(article_id="a", title="T", text="x", score=0.5)])

    assert decode(encode(request), KbSearchRequest) == request
    assert decode(encode(reply), KbSearchReply) == reply


def test_older_workers_read_newer_replies_and_defaults_fill_in() -> None:
    newer = b'{"passages": [{"article_id": "a", "title": "T", "text": "x", "lang": "en"}], "x": 1}'
    minimal = b'{"grant": "g.r.s", "query": "q"}'

    assert decode(newer, KbSearchReply).passages[0].text == "x"
    assert decode(minimal, KbSearchRequest) == KbSearchRequest(grant="g.r.s", query="q", limit=3)
