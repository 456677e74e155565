"""tool-vault as it is deployed: built from Settings, with its lifespan, health, readiness and
metrics; its migrate command; and a release served from the Vault backend."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import asyncpg
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from nats.aio.client import Client as NatsClient

from voiceagents.devstack.servers import NatsServer
from voiceagents.toolvault.__main__ import cli
from voiceagents.toolvault.app import create_app, start_toolvault, stop_toolvault

from .conftest import (
    KEY_ID,
    MASTER_KEY,
    SIGNING_KEY,
    Agents,
    Worker,
    binding,
    make_settings,
    public_key_b64,
    put_secrets,
    sign_grant,
)
from .vault_standin import VaultStandIn

pytestmark = pytest.mark.integration


@pytest.fixture
def vault_server() -> Iterator[VaultStandIn]:
    with VaultStandIn() as server:
        yield server


async def test_the_app_starts_from_settings_and_reports_ready(
    nats_server: NatsServer, embedded_dsn: str
) -> None:
    app = create_app(make_settings(nats_server, embedded_dsn))

    async with AsyncTestClient(app) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")

    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "nats": True,
        "mirror": True,
        "store": True,
        "call_ends": True,
    }
    assert "toolvault_release_seconds" in metrics.text


async def test_without_its_tables_it_is_not_ready(
    nats_server: NatsServer, postgres_dsn: str
) -> None:
    app = create_app(make_settings(nats_server, postgres_dsn))

    async with AsyncTestClient(app) as client:
        ready = await client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["store"] is False


def test_the_migrate_command_creates_the_tables(
    nats_server: NatsServer, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {
        "VA_TOOLVAULT_PUBLIC_BASE_URL": "http://127.0.0.1:8090",
        "VA_TOOLVAULT_GRANT_PUBLIC_KEYS": json.dumps({KEY_ID: public_key_b64(SIGNING_KEY)}),
        "VA_TOOLVAULT_DATABASE_URL": postgres_dsn,
        "VA_TOOLVAULT_MASTER_KEYS": json.dumps({"m1": base64.b64encode(MASTER_KEY).decode()}),
        "VA_TOOLVAULT_MASTER_KEY_ID": "m1",
        **nats_server.environment(),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    first = CliRunner().invoke(cli, ["migrate"])
    again = CliRunner().invoke(cli, ["migrate"])

    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output


async def test_migrated_tables_exist(postgres_dsn: str) -> None:
    from voiceagents.toolvault.embedded import migrate

    await migrate(postgres_dsn)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('toolvault_secrets')") is not None
    finally:
        await conn.close()


async def test_a_release_is_served_from_the_vault_backend(
    nats_server: NatsServer,
    vault_server: VaultStandIn,
    nats_ops: NatsClient,
    registry: NatsClient,
    worker: Worker,
) -> None:
    vault_server.add_approle(
        "toolvault-role",
        "toolvault-secret",
        ["secret/data/voiceagents/*", "secret/metadata/voiceagents/*"],
    )
    settings = make_settings(
        nats_server,
        "",
        backend="vault",
        vault_addr=vault_server.url,
        vault_auth="approle",
        vault_role_id="toolvault-role",
        vault_secret_id="toolvault-secret",
    )
    vault = await start_toolvault(settings)
    try:
        agents = Agents(nats_ops, vault)
        crm = binding("api_key")
        agent = await agents.create(tools=[crm])
        assert (
            await put_secrets(registry, agent, crm.agent_tool_id, {"token": "in-vault"})
        ).version == 1

        reply = await worker.request(
            sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [crm.agent_tool_id]
        )

        [credentials] = worker.open(reply).credentials
        assert credentials.secrets == {"token": "in-vault"}
        stored = vault_server.raw(f"voiceagents/orgs/{agent.org_id}/tools/{crm.agent_tool_id}")
        assert stored is not None and stored["data"]["secrets"] == {"token": "in-vault"}
    finally:
        await stop_toolvault(vault)
