"""A gateway running in-process against the session's real NATS and LiveKit servers, with
Twilio played by `TwilioSimulator` (requests signed by twilio's own RequestValidator)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from litestar import Litestar
from nats.aio.client import Client as NatsClient

from voiceagents.contracts import bus
from voiceagents.contracts.agents import (
    AGENT_CONFIG_BUCKET,
    PHONE_NUMBERS_BUCKET,
    AgentRuntimeConfig,
    PhoneNumberEntry,
    phone_number_key,
)
from voiceagents.contracts.codec import encode
from voiceagents.devstack.phone import TwilioSimulator
from voiceagents.devstack.servers import NATS_USERS, LiveKitServer, NatsServer, free_port
from voiceagents.gateway.app import Gateway, create_app
from voiceagents.gateway.settings import Settings

PUBLIC_BASE_URL = "https://voice.example.com"
AUTH_TOKEN = "twilio-test-token-" + "x" * 14
SIGNING_KEY = secrets.token_bytes(32)
KEY_ID = "test-key-1"


def make_settings(
    nats_server: NatsServer, livekit_url: str, api_key: str, api_secret: str, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "public_base_url": PUBLIC_BASE_URL,
        "twilio_auth_token": AUTH_TOKEN,
        "livekit_url": livekit_url,
        "livekit_api_key": api_key,
        "livekit_api_secret": api_secret,
        "livekit_sip_host": "sip.voice.example.com:5060",
        "sip_username": "twilio-trunk",
        "sip_password": "trunk-password-" + "y" * 12,
        "grant_signing_key": base64.b64encode(SIGNING_KEY).decode(),
        "grant_key_id": KEY_ID,
        "nats_url": nats_server.url,
        "nats_password": nats_server.passwords["gateway"],
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Numbers:
    """Binds fresh numbers to fresh agents in KV, as the registry's projection would."""

    nats: NatsClient

    async def bind(self, **agent_fields: object) -> tuple[str, AgentRuntimeConfig]:
        js = self.nats.jetstream()
        await bus.ensure_buckets(js)
        agent = AgentRuntimeConfig(
            agent_id=f"agent-{uuid.uuid4().hex[:10]}",
            org_id=f"org-{uuid.uuid4().hex[:8]}",
            version=1,
            name="Front desk",
            system_prompt="Be helpful.",
            **agent_fields,  # type: ignore[arg-type]
        )
        number = "+1555" + str(uuid.uuid4().int)[:7]
        await (await js.key_value(AGENT_CONFIG_BUCKET)).put(agent.agent_id, encode(agent))
        entry = PhoneNumberEntry(
            phone_number=number, agent_id=agent.agent_id, org_id=agent.org_id, version=1
        )
        await (await js.key_value(PHONE_NUMBERS_BUCKET)).put(
            phone_number_key(number), encode(entry)
        )
        return number, agent


def safe_passwords() -> dict[str, str]:
    """Hex passwords: nats-server's `$VAR` expansion misreads some url-safe tokens (e.g. ones
    starting with digits) as numbers and refuses to start."""
    return {user: "p" + secrets.token_hex(16) for user in NATS_USERS}


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """The session's NATS (overrides the devstack fixture only for its password alphabet)."""
    with NatsServer(passwords=safe_passwords()) as server:
        yield server


@pytest.fixture
async def numbers(nats_ops: NatsClient) -> Numbers:
    await bus.ensure_buckets(nats_ops.jetstream())
    return Numbers(nats_ops)


@dataclass
class RunningGateway:
    app: Litestar
    client: httpx.AsyncClient
    twilio: TwilioSimulator

    @property
    def state(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    async def bind(
        self, numbers: Numbers, **agent_fields: object
    ) -> tuple[str, AgentRuntimeConfig]:
        """Bind a number in KV and wait until this gateway's mirror has it (the KV watch)."""
        mirror = self.state.mirror
        changed = asyncio.Event()
        mirror.on_change(lambda _bucket, _key: changed.set())
        number, agent = await numbers.bind(**agent_fields)
        while (route := mirror.route(number)) is None or route[1].version != agent.version:
            changed.clear()
            await changed.wait()
        return number, agent


async def run_gateway(settings: Settings, port: int | None = None) -> AsyncIterator[RunningGateway]:
    """Serve the gateway with uvicorn on a loopback port, on the test's own event loop."""
    app = create_app(settings)
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # start-up failed: raise its error
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    client = httpx.AsyncClient(base_url=url, timeout=30)
    try:
        yield RunningGateway(
            app,
            client,
            TwilioSimulator(
                gateway_url=url,
                public_base_url=PUBLIC_BASE_URL,
                auth_token=AUTH_TOKEN,
                client=client,
            ),
        )
    finally:
        await client.aclose()
        server.should_exit = True
        await serving


@pytest.fixture
async def gateway(
    numbers: Numbers, nats_server: NatsServer, livekit_server: LiveKitServer
) -> AsyncIterator[RunningGateway]:
    settings = make_settings(
        nats_server, livekit_server.url, livekit_server.api_key, livekit_server.api_secret
    )
    async for running in run_gateway(settings):
        yield running


@pytest.fixture
async def other_replica(gateway: RunningGateway) -> AsyncIterator[RunningGateway]:
    """A second replica next to `gateway`: same settings, its own memory and port (Twilio's
    callbacks for a call may reach either)."""
    async for running in run_gateway(gateway.state.settings):
        yield running


async def mirrored(replica: RunningGateway, number: str, agent: AgentRuntimeConfig) -> None:
    """Wait until `replica`'s mirror routes `number` to `agent` (bound through another one)."""
    mirror = replica.state.mirror
    changed = asyncio.Event()
    mirror.on_change(lambda _bucket, _key: changed.set())
    while (route := mirror.route(number)) is None or route[1].version != agent.version:
        changed.clear()
        await changed.wait()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for what a NATS message brings about in a gateway: a call event another
    replica or a worker published."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - a delivery inside the app, nothing to await
            await asyncio.sleep(0.01)


def knows_bridged(replica: RunningGateway, call_sid: str) -> Callable[[], bool]:
    """True once `replica` knows the call is bridged (its own, or heard on NATS)."""

    def check() -> bool:
        record = replica.state.handler.book.get(call_sid)
        return record is not None and record.started is not None

    return check


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex
