"""Durable JetStream pull consumers with an explicit ack policy.

A handler acks what it applied (or already had), terminates what it can never read, and hands
what it could not store to `retry_later`: the message comes back after a delay that doubles with
each delivery up to a minute. A database outage never uses a message up, however long it lasts;
a failure the message itself causes (a value PostgreSQL refuses, or a bug it trips) gets
`MAX_FAILED_DELIVERIES` deliveries, then the message is terminated. JetStream announces every
terminated message; the DEADLETTER stream keeps that advisory. A stream another service creates
may not exist yet: the consumer waits for it. The durable consumer is created, or brought to
this config, on start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from voiceagents.contracts import bus

log = structlog.get_logger("voiceagents.registry.consumers")

Handler = Callable[[Msg], Awaitable[None]]

_STREAM_WAIT_SECONDS = 2.0
_FETCH_BATCH = 64
_FETCH_TIMEOUT = 5.0
MAX_FAILED_DELIVERIES = 5
_FIRST_RETRY_SECONDS = 0.5
_MAX_RETRY_SECONDS = 60.0
# Failures that are nobody's fault but the database's (unreachable, restarting, refusing or out
# of connections, a pooled connection broken under a query, a schema a deploy has not migrated
# yet): however long they last, the message waits.
_INFRASTRUCTURE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# ...except what PostgreSQL refuses because of the message's own values: no retry helps.
_MESSAGE_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def _message_at_fault(exc: Exception) -> bool:
    return isinstance(exc, _MESSAGE_ERRORS) or not isinstance(exc, _INFRASTRUCTURE_ERRORS)


async def retry_later(msg: Msg, exc: Exception) -> bool:
    """Have `msg` delivered again after a failure to store it; False if it was terminated
    instead (a failure of its own, `MAX_FAILED_DELIVERIES` times)."""
    delivered = msg.metadata.num_delivered or 1
    if _message_at_fault(exc) and delivered >= MAX_FAILED_DELIVERIES:
        await msg.term()
        return False
    await msg.nak(delay=min(_MAX_RETRY_SECONDS, _FIRST_RETRY_SECONDS * 2 ** (delivered - 1)))
    return True


async def _create_or_update(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable, or bring one an older release created to `config`."""
    try:
        await js.add_consumer(stream, config=config)
    except BadRequestError as exc:
        # A change JetStream makes only by recreating the consumer (its deliver policy): keep
        # consuming with the old config rather than not at all.
        log.warning(
            "durable consumer keeps its old config",
            stream=stream,
            durable=config.durable_name,
            error=str(exc),
        )


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    subject: str,
    handle: Handler,
    ack_wait_seconds: float = 30.0,
) -> None:
    """Forever: fetch from the durable consumer and hand each message to `handle`."""
    config = ConsumerConfig(
        name=durable,
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        # Unlimited: the handler decides when a message is given up (`retry_later`).
        max_deliver=-1,
        ack_wait=ack_wait_seconds,
        filter_subject=subject,
    )
    while True:
        try:
            await _create_or_update(js, stream, config)
            subscription = await js.pull_subscribe_bind(durable=durable, stream=stream)
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
            log.warning(
                "consumer interrupted; resubscribing",
                stream=stream,
                error=str(exc),
                error_type=type(exc).__name__,
            )
            await asyncio.sleep(_STREAM_WAIT_SECONDS)
        finally:
            try:
                await subscription.unsubscribe()
            except Exception:
                log.debug("unsubscribe failed", exc_info=True)
