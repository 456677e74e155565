"""JSON logs, one object per line; every call's lines carry its `call_sid`."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog
from structlog.typing import EventDict

# msgspec renders a line in a fraction of the stdlib json's time (every request logs one); an
# object it does not know is written as its repr, as structlog's default renderer does.
_JSON = msgspec.json.Encoder(enc_hook=repr)


def render_json(event: EventDict, **_: Any) -> str:
    return _JSON.encode(event).decode()


def configure_logging(level: str = "info") -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stdout, level=numeric, format="%(message)s", force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=render_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
