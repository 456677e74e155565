"""Lock 1 of 3, on its own: the NATS identities in infra/nats/nats-server.conf. Only the voice
worker may ask for credentials, only tool-vault may hear that, and nobody reads another service's
replies. Each check runs against the real server started with that very file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RePublish, StreamConfig
from nats.js.errors import KeyNotFoundError, NotFoundError

from voiceagents.contracts import bus
from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET
from voiceagents.contracts.calls import (
    CALL_ENDED_SUBJECT,
    CALL_FAILED_SUBJECT,
    CALLS_STREAM,
    CALLS_SUBJECTS,
)
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.registry import REGISTRY_EVENTS_SUBJECTS, REGISTRY_STREAM
from voiceagents.contracts.toolvault import (
    RELEASE_SUBJECT,
    SECRETS_PUT_SUBJECT,
    TOOLVAULT_EVENTS_SUBJECTS,
    TOOLVAULT_STREAM,
)
from voiceagents.devstack.servers import NatsServer
from voiceagents.toolvault.app import ToolVault

from .conftest import Agents, Worker, binding, put_secrets, sign_grant

pytestmark = pytest.mark.integration


@dataclass
class Violations:
    messages: list[str] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_error(self, error: Exception) -> None:
        self.messages.append(str(error).lower())
        self.seen.set()

    async def next(self) -> str:
        await asyncio.wait_for(self.seen.wait(), timeout=10)
        self.seen.clear()
        return self.messages[-1]


@asynccontextmanager
async def connect_as(
    nats_server: NatsServer, user: str
) -> AsyncIterator[tuple[NatsClient, Violations]]:
    violations = Violations()
    nc = await nats.connect(**nats_server.credentials(user), error_cb=violations.on_error)
    try:
        yield nc, violations
    finally:
        await nc.close()


def releases_answered(toolvault: ToolVault) -> float:
    return sum(
        sample.value
        for metric in toolvault.metrics.release_seconds.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


@pytest.mark.parametrize("user", ["gateway", "registry", "ops"])
async def test_other_services_cannot_ask_for_credentials(
    nats_server: NatsServer, toolvault: ToolVault, agents: Agents, user: str
) -> None:
    agent = await agents.create(tools=[binding("api_key")])
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id)
    before = releases_answered(toolvault)

    async with connect_as(nats_server, user) as (nc, violations):
        await nc.publish(RELEASE_SUBJECT, grant.encode())
        await nc.flush()
        message = await violations.next()
        with pytest.raises((NatsError, TimeoutError)):
            await nc.request(RELEASE_SUBJECT, grant.encode(), timeout=0.5)

    assert f'permissions violation for publish to "{RELEASE_SUBJECT}"' in message
    assert releases_answered(toolvault) == before


@pytest.mark.parametrize("user", ["gateway", "registry", "worker", "ops"])
async def test_only_tool_vault_may_listen_for_release_requests(
    nats_server: NatsServer, user: str
) -> None:
    async with connect_as(nats_server, user) as (nc, violations):
        await nc.subscribe(RELEASE_SUBJECT)
        await nc.flush()
        message = await violations.next()

    assert f'permissions violation for subscription to "{RELEASE_SUBJECT}"' in message


@pytest.mark.parametrize("user", ["gateway", "registry", "ops"])
async def test_other_services_cannot_read_a_workers_reply_inbox(
    nats_server: NatsServer,
    agents: Agents,
    worker: Worker,
    registry: NatsClient,
    user: str,
) -> None:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    await put_secrets(registry, agent, crm.agent_tool_id, {"token": "for-the-worker-only"})

    async with connect_as(nats_server, user) as (nc, violations):
        spy = await nc.subscribe("_INBOX_worker.>")
        await nc.flush()
        message = await violations.next()

        reply = await worker.request(
            sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [crm.agent_tool_id]
        )
        await nc.flush()

        assert reply.error is None and worker.open(reply).credentials
        assert spy.pending_msgs == 0
    assert 'permissions violation for subscription to "_inbox_worker.>"' in message


@pytest.mark.parametrize("user", ["gateway", "worker", "ops"])
async def test_nobody_but_tool_vault_hears_api_key_secrets_in_transit(
    nats_server: NatsServer, user: str
) -> None:
    async with connect_as(nats_server, user) as (nc, violations):
        await nc.subscribe(SECRETS_PUT_SUBJECT)
        await nc.flush()
        message = await violations.next()

    assert f'permissions violation for subscription to "{SECRETS_PUT_SUBJECT}"' in message


@pytest.mark.parametrize("user", ["gateway", "worker"])
async def test_only_the_registry_may_store_api_key_secrets(
    nats_server: NatsServer, user: str
) -> None:
    async with connect_as(nats_server, user) as (nc, violations):
        await nc.publish(SECRETS_PUT_SUBJECT, b"{}")
        await nc.flush()
        message = await violations.next()

    assert f'permissions violation for publish to "{SECRETS_PUT_SUBJECT}"' in message


# -- JetStream: the API is a back door to every subject of the account -------------------------
#
# A stream's subjects travel in the body of a stream create or update request. A user who may
# create or update streams at will can capture any subject (secrets.put, release, other inboxes)
# and read it back through a consumer on its own inbox, whatever its subscribe permissions say.
# So each service may create only the streams it owns, by name, nobody but ops may update or
# delete a stream, and consumers are limited to the streams each service reads.

SERVICES = ("gateway", "worker", "registry", "toolvault")


async def violation_for(violations: Violations, subject: str) -> None:
    """Wait for the server's permissions violation naming this JetStream API subject."""
    wanted = f'permissions violation for publish to "{subject.lower()}"'
    while not any(wanted in message for message in violations.messages):
        await violations.next()


async def stream_missing(nats_ops: NatsClient, name: str) -> bool:
    try:
        await nats_ops.jetstream().stream_info(name)
    except NotFoundError:
        return True
    return False


def capturable(user: str) -> list[str]:
    """Subjects a stream of `user` must never capture: secrets and other services' replies."""
    others = [f"_INBOX_{other}.>" for other in SERVICES if other != user]
    return [RELEASE_SUBJECT, SECRETS_PUT_SUBJECT, *others]


@pytest.mark.parametrize("user", SERVICES)
async def test_no_service_may_create_a_stream_capturing_other_subjects(
    nats_server: NatsServer, nats_ops: NatsClient, user: str
) -> None:
    name = f"SNOOP_{user}"
    async with connect_as(nats_server, user) as (nc, violations):
        js = nc.jetstream(timeout=1)
        with pytest.raises((NatsError, TimeoutError)):
            await js.add_stream(StreamConfig(name=name, subjects=capturable(user)))
        await violation_for(violations, f"$JS.API.STREAM.CREATE.{name}")
        # Nor a consumer that would read an existing capture back.
        with pytest.raises((NatsError, TimeoutError)):
            await js.add_consumer(name, ConsumerConfig(ack_policy=AckPolicy.NONE))
        await violation_for(violations, f"$JS.API.CONSUMER.CREATE.{name}")
    assert await stream_missing(nats_ops, name)


@pytest.mark.parametrize("user", SERVICES)
async def test_no_service_may_change_an_existing_stream(
    nats_server: NatsServer, nats_ops: NatsClient, user: str
) -> None:
    await bus.ensure_stream(nats_ops.jetstream(), CALLS_STREAM)
    tampered = StreamConfig(name=CALLS_STREAM, subjects=[CALLS_SUBJECTS, *capturable(user)])
    async with connect_as(nats_server, user) as (nc, violations):
        js = nc.jetstream(timeout=1)
        with pytest.raises((NatsError, TimeoutError)):
            await js.update_stream(tampered)
        await violation_for(violations, f"$JS.API.STREAM.UPDATE.{CALLS_STREAM}")
        # Whoever may create CALLS (its owners) cannot change it through a create either.
        with pytest.raises((NatsError, TimeoutError)):
            await js.add_stream(tampered)
        for call in (js.delete_stream(CALLS_STREAM), js.purge_stream(CALLS_STREAM)):
            with pytest.raises((NatsError, TimeoutError)):
                await call
        await violation_for(violations, f"$JS.API.STREAM.DELETE.{CALLS_STREAM}")
        await violation_for(violations, f"$JS.API.STREAM.PURGE.{CALLS_STREAM}")
    info = await nats_ops.jetstream().stream_info(CALLS_STREAM)
    assert info.config.subjects == [CALLS_SUBJECTS]


@pytest.mark.parametrize("user", ["gateway", "worker", "registry"])
async def test_no_service_may_delete_tool_vaults_call_end_consumer(
    nats_server: NatsServer, nats_ops: NatsClient, toolvault: ToolVault, user: str
) -> None:
    ops = nats_ops.jetstream()
    names = [c.name for c in await ops.consumers_info(CALLS_STREAM)]
    followers = [name for name in names if name.startswith("toolvault-call-ends-")]
    assert followers, names
    async with connect_as(nats_server, user) as (nc, violations):
        js = nc.jetstream(timeout=1)
        with pytest.raises((NatsError, TimeoutError)):
            await js.delete_consumer(CALLS_STREAM, followers[0])
        await violation_for(violations, f"$JS.API.CONSUMER.DELETE.{CALLS_STREAM}.{followers[0]}")
        # Nor read call events off CALLS (only the registry and tool-vault do, each its own way).
        if user != "registry":
            with pytest.raises((NatsError, TimeoutError)):
                await js.add_consumer(
                    CALLS_STREAM, ConsumerConfig(name="spy", ack_policy=AckPolicy.NONE)
                )
            await violation_for(violations, f"$JS.API.CONSUMER.CREATE.{CALLS_STREAM}.spy")
    assert (await ops.consumer_info(CALLS_STREAM, followers[0])).name == followers[0]


async def test_tool_vault_may_not_touch_the_registrys_call_log_consumer(
    nats_server: NatsServer, nats_ops: NatsClient
) -> None:
    ops = nats_ops.jetstream()
    await bus.ensure_stream(ops, CALLS_STREAM)
    durable = "registry-call-log"
    await ops.add_consumer(
        CALLS_STREAM,
        ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, filter_subject=CALLS_SUBJECTS
        ),
    )
    try:
        async with connect_as(nats_server, "toolvault") as (nc, violations):
            js = nc.jetstream(timeout=1)
            with pytest.raises((NatsError, TimeoutError)):
                await js.delete_consumer(CALLS_STREAM, durable)
            await violation_for(violations, f"$JS.API.CONSUMER.DELETE.{CALLS_STREAM}.{durable}")
            # Re-configuring it (an ephemeral-style create naming it in the body, or by name).
            for config in (
                ConsumerConfig(name=durable, filter_subjects=[CALL_ENDED_SUBJECT]),
                ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_subject="_INBOX_toolvault.x"),
            ):
                with pytest.raises((NatsError, TimeoutError)):
                    await js.add_consumer(CALLS_STREAM, config)
            await violation_for(violations, f"$JS.API.CONSUMER.CREATE.{CALLS_STREAM}.{durable}")
            await violation_for(violations, f"$JS.API.CONSUMER.CREATE.{CALLS_STREAM}")
            stolen = await js.pull_subscribe_bind(durable, stream=CALLS_STREAM)
            with pytest.raises((NatsError, TimeoutError)):
                await stolen.fetch(1, timeout=1)
            await violation_for(violations, f"$JS.API.CONSUMER.MSG.NEXT.{CALLS_STREAM}.{durable}")
        info = await ops.consumer_info(CALLS_STREAM, durable)
        assert info.config.filter_subject == CALLS_SUBJECTS
    finally:
        await ops.delete_consumer(CALLS_STREAM, durable)


# -- ... while each service's own JetStream work still goes through ---------------------------


@pytest.mark.parametrize("user", SERVICES)
async def test_each_service_keeps_its_own_jetstream_operations(
    nats_server: NatsServer, nats_ops: NatsClient, user: str
) -> None:
    await bus.ensure_buckets(nats_ops.jetstream())
    owned = {
        "gateway": [CALLS_STREAM],
        "worker": [CALLS_STREAM],
        "registry": [REGISTRY_STREAM, bus.DEADLETTER_STREAM],
        "toolvault": [TOOLVAULT_STREAM, CALLS_STREAM],
    }[user]
    async with connect_as(nats_server, user) as (nc, violations):
        js = nc.jetstream(timeout=5)
        for stream in owned:
            await bus.ensure_stream(js, stream)
        if user != "worker":
            await bus.ensure_buckets(js)
        mirror = ConfigMirror()
        await mirror.start(js)
        await mirror.stop()
        agents = await js.key_value(AGENT_CONFIG_BUCKET)
        if user == "registry":
            revision = await agents.put("permissions-check", b"{}")
            assert (await agents.get("permissions-check")).revision == revision
            assert "permissions-check" in await agents.keys()
            ack = await js.publish(REGISTRY_EVENTS_SUBJECTS.replace(">", "check"), b"{}")
            assert ack.stream == REGISTRY_STREAM
        elif user == "toolvault":
            ack = await js.publish(TOOLVAULT_EVENTS_SUBJECTS.replace(">", "check"), b"{}")
            assert ack.stream == TOOLVAULT_STREAM
            name = f"toolvault-call-ends-check-{uuid.uuid4().hex[:8]}"
            await js.add_consumer(
                CALLS_STREAM,
                ConsumerConfig(
                    name=name,
                    filter_subjects=[CALL_ENDED_SUBJECT, CALL_FAILED_SUBJECT],
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.NEW,
                    inactive_threshold=60.0,
                ),
            )
            await nats_ops.jetstream().publish(CALL_ENDED_SUBJECT, b"{}")
            pulled = await js.pull_subscribe_bind(name, stream=CALLS_STREAM)
            assert [m.subject for m in await pulled.fetch(1, timeout=5)] == [CALL_ENDED_SUBJECT]
        else:
            with contextlib.suppress(KeyNotFoundError):
                await agents.get("permissions-check")
            ack = await js.publish(f"calls.v1.check.{user}", b"{}")
            assert ack.stream == CALLS_STREAM
        await nc.flush()
    assert violations.messages == []


async def test_the_registrys_durable_consumers_still_work(
    nats_server: NatsServer, nats_ops: NatsClient
) -> None:
    ops = nats_ops.jetstream()
    for stream in (CALLS_STREAM, TOOLVAULT_STREAM):
        await bus.ensure_stream(ops, stream)
    consumers = {CALLS_STREAM: "registry-call-log", TOOLVAULT_STREAM: "registry-auth-status"}
    subjects = {CALLS_STREAM: CALLS_SUBJECTS, TOOLVAULT_STREAM: TOOLVAULT_EVENTS_SUBJECTS}
    try:
        async with connect_as(nats_server, "registry") as (nc, violations):
            js = nc.jetstream(timeout=5)
            for stream, durable in consumers.items():
                subscription = await js.pull_subscribe(
                    subjects[stream],
                    durable=durable,
                    stream=stream,
                    config=ConsumerConfig(
                        durable_name=durable,
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.NEW,
                        filter_subject=subjects[stream],
                    ),
                )
                subject = subjects[stream].replace(">", "check")
                await ops.publish(subject, b"{}")
                (message,) = await subscription.fetch(1, timeout=5)
                await message.ack_sync()
            await nc.flush()
        assert violations.messages == []
    finally:
        for stream, durable in consumers.items():
            with contextlib.suppress(NotFoundError):
                await ops.delete_consumer(stream, durable)


# -- A stream someone else made: refused, never silently used or "fixed" ----------------------


@pytest.fixture
async def fresh_nats() -> AsyncIterator[NatsServer]:
    """A NATS of its own (same config), for streams that must not exist yet."""
    with NatsServer() as server:
        yield server


async def test_a_stream_capturing_more_than_declared_is_refused(fresh_nats: NatsServer) -> None:
    # A compromised service won the first-start race: CALLS also captures release requests.
    async with connect_as(fresh_nats, "ops") as (ops, _):
        await ops.jetstream().add_stream(
            name=CALLS_STREAM, subjects=[CALLS_SUBJECTS, RELEASE_SUBJECT]
        )
        for user in ("gateway", "worker", "toolvault"):
            async with connect_as(fresh_nats, user) as (nc, violations):
                with pytest.raises(bus.StreamTamperedError, match=re.escape(RELEASE_SUBJECT)):
                    await bus.ensure_stream(nc.jetstream(timeout=5), CALLS_STREAM)
                await nc.flush()
            assert violations.messages == []
        info = await ops.jetstream().stream_info(CALLS_STREAM)
        assert info.config.subjects == [CALLS_SUBJECTS, RELEASE_SUBJECT]  # left for an operator


async def test_a_bucket_copying_its_messages_elsewhere_is_refused(fresh_nats: NatsServer) -> None:
    async with connect_as(fresh_nats, "ops") as (ops, _):
        js = ops.jetstream()
        await js.add_stream(
            name=f"KV_{AGENT_CONFIG_BUCKET}",
            subjects=[f"$KV.{AGENT_CONFIG_BUCKET}.>"],
            max_msgs_per_subject=5,
            republish=RePublish(src=">", dest="_INBOX_gateway.copy.>"),
        )
        for user in ("registry", "gateway", "toolvault"):
            async with connect_as(fresh_nats, user) as (nc, _):
                with pytest.raises(bus.StreamTamperedError, match="republish"):
                    await bus.ensure_buckets(nc.jetstream(timeout=5))


async def test_other_differences_are_logged_not_updated(
    fresh_nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # An older release's limits: the service starts, says so, and leaves the stream to ops.
    async with connect_as(fresh_nats, "ops") as (ops, _):
        await ops.jetstream().add_stream(name=CALLS_STREAM, subjects=[CALLS_SUBJECTS], max_age=60)
        async with connect_as(fresh_nats, "gateway") as (nc, violations):
            with caplog.at_level(logging.WARNING, logger="voiceagents.contracts.bus"):
                await bus.ensure_stream(nc.jetstream(timeout=5), CALLS_STREAM)
            await nc.flush()
        assert violations.messages == []
        assert "differs from the declared config" in caplog.text
        assert "max_age" in caplog.text
        assert (await ops.jetstream().stream_info(CALLS_STREAM)).config.max_age == 60


async def test_a_missing_stream_and_buckets_are_created_by_their_owner(
    fresh_nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with connect_as(fresh_nats, "gateway") as (nc, violations):
        js = nc.jetstream(timeout=5)
        with caplog.at_level(logging.WARNING, logger="voiceagents.contracts.bus"):
            for _ in range(2):  # idempotent
                await bus.ensure_stream(js, CALLS_STREAM)
                await bus.ensure_buckets(js)
        await nc.flush()
    assert violations.messages == []
    assert "differs" not in caplog.text
    async with connect_as(fresh_nats, "ops") as (ops, _):
        info = await ops.jetstream().stream_info(CALLS_STREAM)
        assert info.config.subjects == [CALLS_SUBJECTS]
        assert info.config.max_age == bus.stream_config(CALLS_STREAM).max_age
