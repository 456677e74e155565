"""tool-vault's settings: read from VA_TOOLVAULT_* and VA_NATS_*, refusing what cannot work."""

from __future__ import annotations

import base64
import json
import secrets

import pytest

from voiceagents.toolvault.settings import Settings, SettingsError

pytestmark = pytest.mark.unit

KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def env(**overrides: str) -> dict[str, str]:
    values = {
        "VA_TOOLVAULT_PUBLIC_BASE_URL": "https://vault.voice.example.com",
        "VA_TOOLVAULT_GRANT_PUBLIC_KEYS": json.dumps({"gw-1": KEY}),
        "VA_TOOLVAULT_DATABASE_URL": "postgresql://toolvault@db/voiceagents",
        "VA_TOOLVAULT_MASTER_KEYS": json.dumps({"m1": KEY}),
        "VA_TOOLVAULT_MASTER_KEY_ID": "m1",
        "VA_NATS_URL": "nats://nats:4222",
        "VA_NATS_TOOLVAULT_PASSWORD": "a-long-random-nats-password",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v != "<unset>"}


def test_a_complete_environment_gives_the_embedded_backend_and_the_exact_redirect_uri() -> None:
    settings = Settings.from_env(env())

    assert settings.backend == "embedded"
    assert settings.redirect_uri == "https://vault.voice.example.com/api/v1/tools/callback"
    assert settings.nats_url == "nats://nats:4222"
    assert list(settings.public_keys()) == ["gw-1"]


def test_google_needs_only_a_client_id_and_secret() -> None:
    providers = json.dumps({"google": {"client_id": "cid", "client_secret": "a-real-secret"}})

    google = Settings.from_env(env(VA_TOOLVAULT_OAUTH_PROVIDERS=providers)).providers()["google"]

    assert google.authorize_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert google.token_url == "https://oauth2.googleapis.com/token"
    assert google.authorize_params["access_type"] == "offline"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"VA_TOOLVAULT_GRANT_PUBLIC_KEYS": json.dumps({"gw-1": "c2hvcnQ="})}, "GRANT_PUBLIC_KEYS"),
        ({"VA_TOOLVAULT_GRANT_PUBLIC_KEYS": "not json"}, "GRANT_PUBLIC_KEYS"),
        ({"VA_TOOLVAULT_MASTER_KEY_ID": "m2"}, "MASTER_KEY_ID"),
        ({"VA_TOOLVAULT_DATABASE_URL": "<unset>"}, "DATABASE_URL"),
        ({"VA_TOOLVAULT_PUBLIC_BASE_URL": "vault.example.com"}, "PUBLIC_BASE_URL"),
        ({"VA_TOOLVAULT_BACKEND": "vault"}, "VAULT_ADDR"),
        ({"VA_TOOLVAULT_BACKEND": "s3"}, "BACKEND"),
        (
            {
                "VA_TOOLVAULT_BACKEND": "vault",
                "VA_TOOLVAULT_VAULT_ADDR": "https://vault:8200",
                "VA_TOOLVAULT_VAULT_AUTH": "approle",
            },
            "VAULT_ROLE_ID",
        ),
        ({"VA_NATS_TOOLVAULT_PASSWORD": "changeme"}, "VA_NATS_TOOLVAULT_PASSWORD"),
        (
            {
                "VA_TOOLVAULT_OAUTH_PROVIDERS": json.dumps(
                    {"google": {"client_id": "x", "client_secret": "secret"}}
                )
            },
            "client_secret",
        ),
        ({"VA_TOOLVAULT_OAUTH_PROVIDERS": json.dumps({"acme": {"client_id": "x"}})}, "acme"),
        (
            {"VA_TOOLVAULT_RETURN_URL_ORIGINS": json.dumps(["https://voice.example.com/admin"])},
            "RETURN_URL_ORIGINS",
        ),
        ({"VA_TOOLVAULT_RETURN_URL_ORIGINS": json.dumps(["voice.example.com"])}, "RETURN_URL"),
        ({"VA_TOOLVAULT_RETURN_URL_ORIGINS": "https://voice.example.com"}, "RETURN_URL_ORIGINS"),
    ],
)
def test_a_bad_setting_is_refused_by_name(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env(**overrides))


def test_dev_mode_accepts_placeholder_passwords() -> None:
    settings = Settings.from_env(
        env(VA_NATS_TOOLVAULT_PASSWORD="changeme", VA_TOOLVAULT_DEV_MODE="true")
    )
    assert settings.dev_mode


def test_settings_never_print_their_keys() -> None:
    settings = Settings.from_env(env())
    assert KEY not in repr(settings)
    assert "a-long-random-nats-password" not in repr(settings)


def test_return_url_origins_are_a_json_list_of_origins() -> None:
    origins = json.dumps(["https://voice.example.com", "http://localhost:5173/"])

    settings = Settings.from_env(env(VA_TOOLVAULT_RETURN_URL_ORIGINS=origins))

    assert settings.return_origins() == {"https://voice.example.com", "http://localhost:5173"}
