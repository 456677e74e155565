"""tool-vault running in-process against the session's real NATS (started with the repo's
nats-server.conf) and PostgreSQL, with the OAuth provider and Vault played by test stand-ins."""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.public import PrivateKey, SealedBox
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from voiceagents.contracts import bus
from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET, AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.codec import decode, decode_union, encode
from voiceagents.contracts.toolvault import (
    RELEASE_SUBJECT,
    SECRETS_PUT_SUBJECT,
    TOOLVAULT_EVENTS_SUBJECTS,
    AnyToolVaultEvent,
    CredentialReleaseReply,
    CredentialReleaseRequest,
    ReleasedCredentials,
    SecretsPutReply,
    SecretsPutRequest,
)
from voiceagents.devstack.servers import NatsServer
from voiceagents.toolvault.app import ToolVault, start_toolvault, stop_toolvault
from voiceagents.toolvault.embedded import EmbeddedStore, EnvelopeCipher, migrate
from voiceagents.toolvault.logs import configure_logging
from voiceagents.toolvault.settings import Settings

from .oauth_standin import OAuthProviderStandIn

KEY_ID = "gateway-test-1"
SIGNING_KEY = Ed25519PrivateKey.generate()
MASTER_KEY = secrets.token_bytes(32)
PUBLIC_BASE_URL = "http://127.0.0.1:8090"
# The admin UI's origin, where the OAuth callback may send the browser back.
ADMIN_ORIGIN = "https://admin.example.com"


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def sign_grant(
    *,
    org_id: str,
    agent_id: str,
    call_sid: str | None = None,
    key: Ed25519PrivateKey = SIGNING_KEY,
    kid: str = KEY_ID,
    lifetime: int = 600,
    **overrides: Any,
) -> str:
    """A call grant exactly as the gateway signs it."""
    now = int(time.time())
    sid = call_sid or "CA" + uuid.uuid4().hex
    claims: dict[str, Any] = {
        "aud": "tool-vault",
        "iss": "gateway",
        "room": f"call_{sid}",
        "call_sid": sid,
        "org_id": org_id,
        "agent_id": agent_id,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def make_settings(nats_server: NatsServer, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_base_url": PUBLIC_BASE_URL,
        "grant_public_keys": {KEY_ID: public_key_b64(SIGNING_KEY)},
        "backend": "embedded",
        "database_url": database_url,
        "master_keys": {"m1": base64.b64encode(MASTER_KEY).decode()},
        "master_key_id": "m1",
        "nats_url": nats_server.url,
        "nats_password": nats_server.passwords["toolvault"],
        "instance_id": f"test-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Worker:
    """A voice worker's side of the release protocol, connected as NATS user `worker`."""

    nats: NatsClient
    last_private_key: PrivateKey | None = None
    last_raw_reply: bytes = b""

    async def request(self, grant: str, agent_tool_ids: list[str]) -> CredentialReleaseReply:
        self.last_private_key = PrivateKey.generate()
        request = CredentialReleaseRequest(
            grant=grant,
            worker_public_key=base64.b64encode(bytes(self.last_private_key.public_key)).decode(),
            agent_tool_ids=agent_tool_ids,
        )
        message = await self.nats.request(RELEASE_SUBJECT, encode(request), timeout=10)
        self.last_raw_reply = message.data
        return decode(message.data, CredentialReleaseReply)

    def open(self, reply: CredentialReleaseReply) -> ReleasedCredentials:
        assert reply.sealed_credentials is not None and self.last_private_key is not None
        box = SealedBox(self.last_private_key)
        return decode(box.decrypt(base64.b64decode(reply.sealed_credentials)), ReleasedCredentials)


@dataclass
class Agents:
    """Projects agents into KV as the registry does; waits until tool-vault's mirror has them."""

    nats: NatsClient
    vault: ToolVault
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.vault.mirror.on_change(lambda _bucket, _key: self._changed.set())

    async def put(self, agent: AgentRuntimeConfig) -> AgentRuntimeConfig:
        js = self.nats.jetstream()
        await (await js.key_value(AGENT_CONFIG_BUCKET)).put(agent.agent_id, encode(agent))
        while self.vault.mirror.agent(agent.agent_id) != agent:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), timeout=10)
        return agent

    async def create(
        self, tools: list[ToolBinding] | None = None, **fields: Any
    ) -> AgentRuntimeConfig:
        agent = AgentRuntimeConfig(
            agent_id=f"agent-{uuid.uuid4().hex[:10]}",
            org_id=fields.pop("org_id", f"org-{uuid.uuid4().hex[:8]}"),
            version=fields.pop("version", 1),
            name="Front desk",
            system_prompt="Be helpful.",
            tools=tools or [],
            **fields,
        )
        return await self.put(agent)


async def put_secrets(
    registry: NatsClient, agent: AgentRuntimeConfig, agent_tool_id: str, values: dict[str, str]
) -> SecretsPutReply:
    """What the registry does when an admin saves a tool's API key."""
    request = SecretsPutRequest(
        org_id=agent.org_id,
        agent_id=agent.agent_id,
        agent_tool_id=agent_tool_id,
        tool_name="crm",
        secrets=values,
        actor="admin-1",
    )
    message = await registry.request(SECRETS_PUT_SUBJECT, encode(request), timeout=10)
    return decode(message.data, SecretsPutReply)


@dataclass(frozen=True)
class LiveCall:
    """A call in progress for an agent whose CRM tool has a stored API key."""

    agent: AgentRuntimeConfig
    crm: ToolBinding
    call_sid: str
    grant: str


async def live_call_with_api_key(agents: Agents, registry: NatsClient) -> LiveCall:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    await put_secrets(registry, agent, crm.agent_tool_id, {"token": "t"})
    call_sid = "CA" + uuid.uuid4().hex
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id, call_sid=call_sid)
    return LiveCall(agent=agent, crm=crm, call_sid=call_sid, grant=grant)


async def audit_events(nats_ops: NatsClient, org_id: str, count: int) -> list[AnyToolVaultEvent]:
    """The first `count` audit events of this org on the TOOLVAULT stream, as the registry sees
    them (waits for tool-vault's background publishes)."""
    found: list[AnyToolVaultEvent] = []
    enough = asyncio.Event()

    async def collect(message: Msg) -> None:
        event = decode_union(message.data, AnyToolVaultEvent)
        if event.org_id == org_id:
            found.append(event)
            if len(found) >= count:
                enough.set()

    js = nats_ops.jetstream()
    subscription = await js.subscribe(
        TOOLVAULT_EVENTS_SUBJECTS,
        cb=collect,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        await asyncio.wait_for(enough.wait(), timeout=15)
    finally:
        await subscription.unsubscribe()
    return found


async def until_revoked(vault: ToolVault, call_sid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait (at most 15 s) until tool-vault has applied this call's end."""
    revocations = vault.revocations
    applied = asyncio.Event()
    original = revocations.revoke

    def revoke(sid: str, ended_at: float) -> None:
        original(sid, ended_at)
        applied.set()

    monkeypatch.setattr(revocations, "revoke", revoke)

    async def wait() -> None:
        while not revocations.is_revoked(call_sid):
            applied.clear()
            await applied.wait()

    await asyncio.wait_for(wait(), timeout=15)


def binding(auth_type: str = "api_key", tool_name: str = "crm") -> ToolBinding:
    return ToolBinding(
        agent_tool_id=f"at-{uuid.uuid4().hex[:10]}",
        tool_name=tool_name,
        auth_type=auth_type,  # type: ignore[arg-type]
    )


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything tool-vault logs during the test (JSON lines)."""
    buffer = io.StringIO()
    configure_logging("debug", buffer)
    yield buffer
    configure_logging("info")


@pytest.fixture
def oauth_provider() -> Iterator[OAuthProviderStandIn]:
    with OAuthProviderStandIn() as provider:
        yield provider


@pytest.fixture
async def embedded_dsn(postgres_dsn: str) -> str:
    await migrate(postgres_dsn)
    return postgres_dsn


@pytest.fixture
async def toolvault(
    nats_server: NatsServer,
    embedded_dsn: str,
    oauth_provider: OAuthProviderStandIn,
    log_output: io.StringIO,
) -> AsyncIterator[ToolVault]:
    settings = make_settings(
        nats_server,
        embedded_dsn,
        oauth_providers={"google": oauth_provider.provider_config()},
        return_url_origins=[ADMIN_ORIGIN],
    )
    vault = await start_toolvault(settings)
    yield vault
    await stop_toolvault(vault)


@pytest.fixture
async def worker(nats_server: NatsServer) -> AsyncIterator[Worker]:
    nc = await nats.connect(**nats_server.credentials("worker"))
    yield Worker(nc)
    await nc.close()


@pytest.fixture
async def registry(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A connection as the registry's NATS user (it forwards OAuth starts and API-key secrets)."""
    nc = await nats.connect(**nats_server.credentials("registry"))
    yield nc
    await nc.close()


@pytest.fixture
async def agents(nats_ops: NatsClient, toolvault: ToolVault) -> Agents:
    await bus.ensure_buckets(nats_ops.jetstream())
    return Agents(nats_ops, toolvault)


def embedded_store(
    dsn: str, keys: dict[str, bytes] | None = None, active: str = "m1"
) -> EmbeddedStore:
    return EmbeddedStore(dsn, EnvelopeCipher(keys or {"m1": MASTER_KEY}, active))
