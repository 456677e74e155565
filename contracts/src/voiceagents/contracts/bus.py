"""The NATS side of the contracts: how a service connects, and the streams and buckets it uses.

Every service connects as its own user with its own inbox prefix (`_INBOX_<user>`), which the
server config (infra/nats/nats-server.conf) makes readable by that user only. Streams and buckets
are declared here once; whoever publishes to one ensures it exists, with exactly this config.

The services may create these streams and buckets, by name, but never update or delete one (only
the `ops` user may): a stream's subjects travel in the request's body, so whoever may change a
stream at will can capture any subject of the account. Whoever finds one already there checks
that it captures exactly the declared subjects and nothing else (no mirror, sources, republish or
subject transform) and refuses to start otherwise; other differences (an older release's limits,
replicas) are logged for an operator to converge as `ops`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET, PHONE_NUMBERS_BUCKET
from voiceagents.contracts.calls import CALLS_STREAM, CALLS_SUBJECTS
from voiceagents.contracts.registry import REGISTRY_EVENTS_SUBJECTS, REGISTRY_STREAM
from voiceagents.contracts.toolvault import TOOLVAULT_EVENTS_SUBJECTS, TOOLVAULT_STREAM

DEADLETTER_STREAM = "DEADLETTER"
# JetStream announces a message that ran out of deliveries (or was terminated) with an advisory;
# keeping the advisories keeps the stream sequence of every poison message for inspection.
DEADLETTER_SUBJECTS = [
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
]

log = logging.getLogger(__name__)

_DAY = 24 * 3600.0
# Long enough that an outbox relay replaying after an outage is still deduplicated.
_DUPLICATE_WINDOW = 3600.0
_KV_HISTORY = 5


def _replicas() -> int:
    # R1 on one machine; R3 on a NATS cluster (set by the deployment).
    return int(os.environ.get("VA_NATS_REPLICAS", "1"))


def stream_config(name: str) -> StreamConfig:
    """The one definition of each JetStream stream."""
    subjects, max_age = {
        REGISTRY_STREAM: ([REGISTRY_EVENTS_SUBJECTS], 30 * _DAY),
        CALLS_STREAM: ([CALLS_SUBJECTS], 30 * _DAY),
        TOOLVAULT_STREAM: ([TOOLVAULT_EVENTS_SUBJECTS], 90 * _DAY),
        DEADLETTER_STREAM: (DEADLETTER_SUBJECTS, 30 * _DAY),
    }[name]
    return StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age,
        duplicate_window=_DUPLICATE_WINDOW,
        num_replicas=_replicas(),
    )


async def connect(
    url: str, user: str, password: str, *, name: str | None = None, **options: Any
) -> Client:
    """Connect as one service's NATS user; reconnects forever, replies on the user's own inbox."""
    return await nats.connect(
        servers=url,
        user=user,
        password=password,
        inbox_prefix=f"_INBOX_{user}",
        name=name or user,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        **options,
    )


class StreamTamperedError(RuntimeError):
    """A stream or KV bucket exists, but captures other subjects than declared (or copies
    messages elsewhere): created or changed by someone else. The service refuses to start."""


def _kv_stream_config(bucket: str) -> StreamConfig:
    # What nats-py's create_key_value makes of ensure_buckets' arguments.
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=_KV_HISTORY,
        num_replicas=_replicas(),
    )


# The settings that decide which messages a stream takes in or hands on. Anything else differing
# (limits, replicas, duplicate window) is an older release's stream: logged, not refused.
_ROUTING = ("mirror", "sources", "republish", "subject_transform")
_TUNING = (
    "retention",
    "storage",
    "discard",
    "max_age",
    "max_msgs_per_subject",
    "duplicate_window",
    "num_replicas",
)


def _check(found: StreamConfig, declared: StreamConfig) -> None:
    routing = {field: getattr(found, field) for field in _ROUTING if getattr(found, field)}
    if sorted(found.subjects or []) != sorted(declared.subjects or []) or routing:
        raise StreamTamperedError(
            f"JetStream stream {declared.name} captures {found.subjects}"
            + (f" with {routing}" if routing else "")
            + f", not exactly {declared.subjects}: it was created or changed by someone else."
            " Refusing to use it; an operator must inspect it and delete or fix it as the NATS"
            " `ops` user (see deploy/README.md, NATS)."
        )
    differing = {}
    for field in _TUNING:
        want, have = getattr(declared, field), getattr(found, field)
        if want not in (None, -1, 0) and have != want:  # (unset in the declaration)
            differing[field] = (have, want)
    if differing:
        log.warning(
            "JetStream stream %s differs from the declared config (found, declared): %s;"
            " services never update streams, converge it as the NATS `ops` user",
            declared.name,
            differing,
        )


async def _existing(js: JetStreamContext, name: str) -> StreamConfig | None:
    try:
        return (await js.stream_info(name)).config
    except NotFoundError:
        return None


async def ensure_stream(js: JetStreamContext, name: str) -> None:
    """Create the stream if missing; check an existing one captures exactly the declared subjects
    (StreamTamperedError otherwise). Never updates a stream. Idempotent."""
    config = stream_config(name)
    found = await _existing(js, name)
    if found is None:
        try:
            found = (await js.add_stream(config)).config
        except BadRequestError:
            # Created meanwhile (another replica, or someone else): look at what is there.
            found = await _existing(js, name)
            if found is None:
                raise
    _check(found, config)


async def ensure_buckets(js: JetStreamContext) -> None:
    """Create the runtime-config KV buckets if missing; check existing ones as ensure_stream
    does. Idempotent."""
    for bucket in (AGENT_CONFIG_BUCKET, PHONE_NUMBERS_BUCKET):
        declared = _kv_stream_config(bucket)
        assert declared.name is not None
        found = await _existing(js, declared.name)
        if found is None:
            with contextlib.suppress(BadRequestError):  # else created meanwhile: checked below
                await js.create_key_value(bucket=bucket, history=_KV_HISTORY, replicas=_replicas())
            found = await _existing(js, declared.name)
            if found is None:
                raise nats.js.errors.BucketNotFoundError
        _check(found, declared)


def stop_if_cancelled() -> None:
    """Call in a consumer loop's `except` branches. nats-py turns a cancellation into
    `ConnectionClosedError` when the connection closes at the same moment (shutdown does both):
    honour the cancellation anyway, or the task loops on and shutdown hangs."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
