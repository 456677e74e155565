"""Lock 1 of 3, on its own: the NATS identities in infra/nats/nats-server.conf. Only the voice
worker may ask for credentials, only tool-vault may hear that, and nobody reads another service's
replies. Each check runs against the real server started with that very file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from voiceagents.contracts.toolvault import RELEASE_SUBJECT, SECRETS_PUT_SUBJECT
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
