"""Settings from the environment, and the grant key pair command."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from voiceagents.contracts.calls import REGISTRY_AUDIENCE, TOOLVAULT_AUDIENCE, CallContext
from voiceagents.contracts.grants import GrantVerifier, decode_public_keys
from voiceagents.gateway.__main__ import cli
from voiceagents.gateway.grants import GrantSigner
from voiceagents.gateway.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def environment(**overrides: str) -> dict[str, str]:
    env = {
        "VA_GATEWAY_PUBLIC_BASE_URL": "https://voice.example.com",
        "VA_GATEWAY_TWILIO_AUTH_TOKEN": secrets.token_hex(16),
        "VA_GATEWAY_LIVEKIT_URL": "http://127.0.0.1:7880",
        "VA_GATEWAY_LIVEKIT_API_KEY": "key",
        "VA_GATEWAY_LIVEKIT_API_SECRET": secrets.token_hex(16),
        "VA_GATEWAY_LIVEKIT_SIP_HOST": "sip.example.com",
        "VA_GATEWAY_SIP_USERNAME": "trunk",
        "VA_GATEWAY_SIP_PASSWORD": secrets.token_hex(8),
        "VA_GATEWAY_GRANT_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "VA_GATEWAY_GRANT_KEY_ID": "k1",
        "VA_GATEWAY_LIVEKIT_BUDGET_SECONDS": "1.5",
        "VA_NATS_URL": "nats://127.0.0.1:4333",
        "VA_NATS_GATEWAY_PASSWORD": "nats-pw",
    }
    env.update(overrides)
    return env


def test_settings_come_from_the_environment_with_types() -> None:
    settings = Settings.from_env(environment())

    assert settings.livekit_budget_seconds == 1.5
    assert settings.nats_url == "nats://127.0.0.1:4333"
    assert settings.nats_password == "nats-pw"
    assert settings.worker_agent_name == "voice-agent"
    assert settings.sip_allowed_networks == []


def test_sip_allowed_addresses_are_a_comma_separated_list_of_ips_and_cidr_blocks() -> None:
    env = environment(VA_GATEWAY_SIP_ALLOWED_ADDRESSES=" 54.172.60.0/30, 54.244.51.0/30,10.0.0.7 ")

    assert Settings.from_env(env).sip_allowed_networks == [
        "54.172.60.0/30",
        "54.244.51.0/30",
        "10.0.0.7",
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VA_GATEWAY_TWILIO_AUTH_TOKEN", "changeme"),
        ("VA_GATEWAY_GRANT_SIGNING_KEY", "bm90IGEga2V5"),
        ("VA_GATEWAY_PUBLIC_BASE_URL", "voice.example.com"),
        ("VA_GATEWAY_LIVEKIT_BUDGET_SECONDS", "soon"),
        ("VA_GATEWAY_AGENT_LOST_GRACE_SECONDS", "-1"),
        ("VA_GATEWAY_SIP_ALLOWED_ADDRESSES", "54.172.60.0/30,twilio.com"),
    ],
)
def test_bad_or_placeholder_settings_are_refused_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(environment(**{variable: value}))


def test_placeholder_secrets_are_allowed_in_dev_mode() -> None:
    env = environment(VA_GATEWAY_TWILIO_AUTH_TOKEN="changeme", VA_GATEWAY_DEV_MODE="true")

    assert Settings.from_env(env).dev_mode


def test_keygen_prints_a_pair_tool_vault_and_the_registry_can_verify_grants_with() -> None:
    result = CliRunner().invoke(cli, ["keygen", "--key-id", "gw-7"])

    assert result.exit_code == 0
    lines = dict(line.split("=", 1) for line in result.output.strip().splitlines())
    public_keys = json.loads(lines["VA_TOOLVAULT_GRANT_PUBLIC_KEYS"].strip("'"))
    assert json.loads(lines["VA_REGISTRY_GRANT_PUBLIC_KEYS"].strip("'")) == public_keys
    assert lines["VA_GATEWAY_GRANT_KEY_ID"] == "gw-7"
    signer = GrantSigner(base64.b64decode(lines["VA_GATEWAY_GRANT_SIGNING_KEY"]), "gw-7", 60)
    grant = signer.sign(
        CallContext(
            call_sid="CA1",
            room="call_CA1",
            org_id="o",
            agent_id="a",
            agent_version=1,
            from_number="+1",
            to_number="+2",
            started_at=datetime.now(UTC),
        )
    )
    for audience in (TOOLVAULT_AUDIENCE, REGISTRY_AUDIENCE):
        claims = GrantVerifier(decode_public_keys(public_keys), audience=audience).verify(grant)
        assert (claims.call_sid, claims.exp - claims.iat) == ("CA1", 60)
