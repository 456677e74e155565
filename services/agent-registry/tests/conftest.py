"""A registry running in-process against a fresh PostgreSQL database and the session's NATS,
with a platform-admin key and helpers to make organizations, org-admin keys and agents; call
grants signed as the gateway signs them (`GRANTS`), with the key the registry trusts."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from voiceagents.contracts import bus
from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET, PHONE_NUMBERS_BUCKET
from voiceagents.devstack.servers import NatsServer
from voiceagents.gateway.grants import GrantSigner, generate_key_pair
from voiceagents.registry import db
from voiceagents.registry.app import create_app
from voiceagents.registry.auth import issue_key
from voiceagents.registry.runtime import Registry
from voiceagents.registry.settings import Settings


def new_number() -> str:
    """A phone number no other test uses (KV is shared by the whole session)."""
    return "+1555" + str(secrets.randbelow(10**7)).zfill(7)


GRANT_KEYS = generate_key_pair("tests")
GRANTS = GrantSigner(base64.b64decode(GRANT_KEYS["VA_GATEWAY_GRANT_SIGNING_KEY"]), "tests", 600)


def make_settings(dsn: str, nats_server: NatsServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dsn": dsn,
        "grant_public_keys": json.loads(GRANT_KEYS["VA_REGISTRY_GRANT_PUBLIC_KEYS"]),
        "nats_url": nats_server.url,
        "nats_password": nats_server.passwords["registry"],
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningRegistry:
    app: Litestar
    client: httpx.AsyncClient
    dsn: str
    admin_key: str

    @property
    def state(self) -> Registry:
        registry: Registry = self.app.state.registry
        return registry

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def request(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
        headers = {**self.headers(key), **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def org(self, name: str | None = None) -> str:
        response = await self.request(
            "POST", "/api/v1/organizations", json={"name": name or f"org-{uuid.uuid4().hex[:8]}"}
        )
        assert response.status_code == 201, response.text
        org_id: str = response.json()["id"]
        return org_id

    async def org_key(self, org_id: str) -> str:
        response = await self.request(
            "POST", f"/api/v1/organizations/{org_id}/api-keys", json={"name": "org admin"}
        )
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    async def agent(self, org_id: str, key: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {
            "organization_id": org_id,
            "name": "Front desk",
            "system_prompt": "You answer the phone for Acme.",
            **fields,
        }
        response = await self.request("POST", "/api/v1/agents", key=key, json=body)
        assert response.status_code == 201, response.text
        agent: dict[str, Any] = response.json()
        return agent

    async def settled(self) -> None:
        """Until the relay has published and projected everything committed so far."""
        while self.state.relay is None:  # noqa: ASYNC110 - set once NATS is reached
            await asyncio.sleep(0.01)
        await self.state.relay.wait_idle()


async def admin_key(dsn: str) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        issued = await issue_key(
            connection, role="platform_admin", organization_id=None, name="tests"
        )
    finally:
        await connection.close()
    return issued.key


RegistryFactory = Callable[..., Any]


@pytest.fixture
async def migrated_dsn(postgres_dsn: str) -> str:
    await asyncio.to_thread(db.migrate, postgres_dsn)
    return postgres_dsn


@pytest.fixture
async def start_registry(
    migrated_dsn: str, nats_server: NatsServer
) -> AsyncIterator[Callable[..., Any]]:
    """Start registries on the test's database (several may run, like replicas)."""
    key = await admin_key(migrated_dsn)
    stop = asyncio.Event()
    running: list[asyncio.Task[None]] = []

    async def serve(app: Litestar, started: asyncio.Event) -> None:
        # The lifespan is entered and left in this one task (anyio requires it).
        async with app.lifespan():
            started.set()
            await stop.wait()

    async def start(nats: NatsServer | None = None, **overrides: Any) -> RunningRegistry:
        app = create_app(make_settings(migrated_dsn, nats or nats_server, **overrides))
        started = asyncio.Event()
        task = asyncio.create_task(serve(app, started))
        running.append(task)
        await asyncio.wait(
            [task, asyncio.create_task(started.wait())], return_when="FIRST_COMPLETED"
        )
        if task.done():
            task.result()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://registry.test"
        )
        return RunningRegistry(app=app, client=client, dsn=migrated_dsn, admin_key=key)

    yield start
    stop.set()
    await asyncio.gather(*running)


@pytest.fixture
async def registry(start_registry: Callable[..., Any]) -> RunningRegistry:
    running: RunningRegistry = await start_registry()
    return running


@dataclass
class Buckets:
    agents: KeyValue
    numbers: KeyValue


@pytest.fixture
async def buckets(nats_ops: NatsClient) -> Buckets:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    return Buckets(
        agents=await js.key_value(AGENT_CONFIG_BUCKET),
        numbers=await js.key_value(PHONE_NUMBERS_BUCKET),
    )
