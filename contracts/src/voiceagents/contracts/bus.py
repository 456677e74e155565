"""The NATS side of the contracts: how a service connects, and the streams and buckets it uses.

Every service connects as its own user with its own inbox prefix (`_INBOX_<user>`), which the
server config (infra/nats/nats-server.conf) makes readable by that user only. Streams and buckets
are declared here once; whoever publishes to one ensures it exists, with exactly this config.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

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

_DAY = 24 * 3600.0
# Long enough that an outbox relay replaying after an outage is still deduplicated.
_DUPLICATE_WINDOW = 3600.0


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


async def ensure_stream(js: JetStreamContext, name: str) -> None:
    """Create the stream, or bring an existing one to the declared config. Idempotent."""
    config = stream_config(name)
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another config (e.g. an older release): converge to this one.
        await js.update_stream(config)


async def ensure_buckets(js: JetStreamContext) -> None:
    """Create the runtime-config KV buckets if missing. Idempotent."""
    for bucket in (AGENT_CONFIG_BUCKET, PHONE_NUMBERS_BUCKET):
        try:
            await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(bucket=bucket, history=5, replicas=_replicas())


def stop_if_cancelled() -> None:
    """Call in a consumer loop's `except` branches. nats-py turns a cancellation into
    `ConnectionClosedError` when the connection closes at the same moment (shutdown does both):
    honour the cancellation anyway, or the task loops on and shutdown hangs."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
