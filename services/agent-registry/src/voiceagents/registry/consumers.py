"""Durable JetStream pull consumers with an explicit ack policy.

A handler acks what it applied (or already had), naks what failed for a passing reason (it
comes back after a delay), and terminates what it can never read. After `max_deliver` attempts
JetStream gives up on a message and announces it; the DEADLETTER stream keeps that advisory.
A stream another service creates may not exist yet: the consumer waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from voiceagents.contracts import bus

log = structlog.get_logger("voiceagents.registry.consumers")

Handler = Callable[[Msg], Awaitable[None]]

_STREAM_WAIT_SECONDS = 2.0
_FETCH_BATCH = 64
_FETCH_TIMEOUT = 5.0


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    subject: str,
    handle: Handler,
    max_deliver: int = 5,
    ack_wait_seconds: float = 30.0,
) -> None:
    """Forever: fetch from the durable consumer and hand each message to `handle`."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=max_deliver,
        ack_wait=ack_wait_seconds,
        filter_subject=subject,
    )
    while True:
        try:
            subscription = await js.pull_subscribe(
                subject, durable=durable, stream=stream, config=config
            )
        except NotFoundError:
            bus.stop_if_cancelled()
            log.info("stream not there yet; waiting", stream=stream)
            await asyncio.sleep(_STREAM_WAIT_SECONDS)
            continue
        except Exception as exc:  # NATS unreachable: the client reconnects, try again
            bus.stop_if_cancelled()
            log.warning("could not subscribe", stream=stream, error=str(exc))
            await asyncio.sleep(_STREAM_WAIT_SECONDS)
            continue
        log.info("consuming", stream=stream, durable=durable)
        try:
            while True:
                try:
                    messages = await subscription.fetch(_FETCH_BATCH, timeout=_FETCH_TIMEOUT)
                except NatsTimeoutError:
                    bus.stop_if_cancelled()
                    continue
                for message in messages:
                    await handle(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            bus.stop_if_cancelled()
            log.warning("consumer interrupted; resubscribing", stream=stream, error=str(exc))
            await asyncio.sleep(_STREAM_WAIT_SECONDS)
        finally:
            try:
                await subscription.unsubscribe()
            except Exception:
                log.debug("unsubscribe failed", exc_info=True)
