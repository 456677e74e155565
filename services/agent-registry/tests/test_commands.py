"""The operator commands: settings from the environment, migrate, the first admin key, and the
KV rebuild, run the way an operator runs them."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner
from nats.js.errors import KeyNotFoundError

from voiceagents.devstack.servers import NatsServer
from voiceagents.registry.__main__ import cli
from voiceagents.registry.settings import Settings, SettingsError

from .conftest import GRANT_KEYS, Buckets, RunningRegistry, new_number

pytestmark = pytest.mark.integration


def test_settings_refuse_placeholders_outside_dev_mode() -> None:
    env = {"VA_REGISTRY_DSN": "postgresql://registry:changeme@db/registry"}
    with pytest.raises(SettingsError, match="VA_NATS_REGISTRY_PASSWORD"):
        Settings.from_env({**env, "VA_NATS_REGISTRY_PASSWORD": "changeme"})
    with pytest.raises(SettingsError, match="VA_REGISTRY_DSN"):
        Settings.from_env({**env, "VA_NATS_REGISTRY_PASSWORD": "a-real-one"})
    with pytest.raises(SettingsError, match="VA_REGISTRY_PORT"):
        Settings.from_env({**env, "VA_REGISTRY_PORT": "eighty", "VA_REGISTRY_DEV_MODE": "true"})
    with pytest.raises(SettingsError, match="VA_REGISTRY_LOG_LEVEL"):
        Settings.from_env({**env, "VA_REGISTRY_LOG_LEVEL": "loud", "VA_REGISTRY_DEV_MODE": "true"})
    with pytest.raises(SettingsError, match=r"VA_REGISTRY_GRANT_PUBLIC_KEYS\['gw-2'\]"):
        Settings.from_env(
            {
                **env,
                "VA_REGISTRY_DEV_MODE": "true",
                "VA_REGISTRY_GRANT_PUBLIC_KEYS": json.dumps({"gw-2": "c2hvcnQ="}),
            }
        )
    with pytest.raises(SettingsError, match="VA_REGISTRY_GRANT_PUBLIC_KEYS"):
        Settings.from_env(
            {**env, "VA_REGISTRY_DEV_MODE": "true", "VA_REGISTRY_GRANT_PUBLIC_KEYS": "not json"}
        )
    dev = Settings.from_env(
        {
            **env,
            "VA_REGISTRY_DEV_MODE": "true",
            "VA_NATS_URL": "nats://n:1",
            "VA_REGISTRY_GRANT_PUBLIC_KEYS": GRANT_KEYS["VA_REGISTRY_GRANT_PUBLIC_KEYS"],
        }
    )
    assert (dev.nats_url, dev.port) == ("nats://n:1", 8081)
    assert list(dev.public_keys()) == ["tests"]


def test_serve_refuses_to_start_without_the_gateways_grant_keys() -> None:
    env = {
        "VA_REGISTRY_DSN": "postgresql://registry:pw@db/registry",
        "VA_REGISTRY_DEV_MODE": "true",
    }

    result = CliRunner().invoke(cli, ["serve"], env=env)

    assert result.exit_code != 0
    assert "VA_REGISTRY_GRANT_PUBLIC_KEYS" in result.output


async def test_migrate_bootstrap_key_and_rebuild_kv_from_the_command_line(
    migrated_dsn: str, nats_server: NatsServer, start_registry: object, buckets: Buckets
) -> None:
    env = {
        **nats_server.environment(),
        "VA_REGISTRY_DSN": migrated_dsn,
    }
    runner = CliRunner()
    migrated = await asyncio.to_thread(runner.invoke, cli, ["migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    created = await asyncio.to_thread(
        runner.invoke, cli, ["create-admin-key", "--name", "ops"], env=env
    )
    assert created.exit_code == 0, created.output
    key = created.output.strip()
    assert key.startswith("va_")

    registry: RunningRegistry = await start_registry()  # type: ignore[operator]
    orgs = await registry.request("GET", "/api/v1/organizations", key=key)
    assert orgs.status_code == 200
    org = await registry.org()
    number = new_number()
    agent = await registry.agent(org, key=key, phone_number=number)
    await registry.settled()
    await buckets.agents.delete(agent["id"])

    rebuilt = await asyncio.to_thread(runner.invoke, cli, ["rebuild-kv"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    try:
        entry = await buckets.agents.get(agent["id"])
    except KeyNotFoundError:
        pytest.fail("rebuild-kv did not restore the agent")
    assert entry.value is not None
