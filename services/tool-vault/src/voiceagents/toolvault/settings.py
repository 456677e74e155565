"""tool-vault's settings, read once from `VA_TOOLVAULT_*` (plus the shared `VA_NATS_*`).

JSON-valued settings: `VA_TOOLVAULT_GRANT_PUBLIC_KEYS` = {kid: base64 Ed25519 public key},
`VA_TOOLVAULT_MASTER_KEYS` = {kid: base64 32-byte AES key}, `VA_TOOLVAULT_OAUTH_PROVIDERS` =
{name: provider config} (see oauth.py), `VA_TOOLVAULT_RETURN_URL_ORIGINS` = [origin, ...].
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from voiceagents.contracts.grants import decode_public_keys
from voiceagents.toolvault.oauth import OAuthProvider, load_providers, url_origin
from voiceagents.toolvault.vault import VaultAuth, VaultConfig

PREFIX = "VA_TOOLVAULT_"
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "secret", "dev", "devsecret", "placeholder"})
_JSON_FIELDS = ("grant_public_keys", "master_keys", "oauth_providers", "return_url_origins")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # The OAuth redirect URI is {public_base_url}/api/v1/tools/callback, exactly.
    public_base_url: str
    grant_public_keys: dict[str, str]
    backend: Literal["embedded", "vault"] = "embedded"
    # embedded backend
    database_url: str = ""
    master_keys: dict[str, str] = {}
    master_key_id: str = ""
    # vault backend
    vault_addr: str = ""
    vault_auth: VaultAuth = "kubernetes"
    vault_mount: str = "secret"
    vault_path_prefix: str = "voiceagents"
    vault_role: str = "tool-vault"
    vault_kubernetes_mount: str = "kubernetes"
    vault_jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    vault_approle_mount: str = "approle"
    vault_role_id: str = ""
    vault_secret_id: str = ""
    vault_token: str = ""
    vault_namespace: str | None = None
    vault_ca_cert: str | None = None
    # How old a secret the release path may answer from memory (store.ReleaseReadCache).
    release_cache_seconds: float = 5.0
    oauth_providers: dict[str, dict[str, Any]] = {}
    # Origins (besides tool-vault's own) the OAuth callback may send the admin's browser back to,
    # e.g. the admin UI's `https://voice.example.com`; any other return_url is refused.
    return_url_origins: list[str] = []
    # How long a call can last (the gateway's grant lifetime): how long a revocation is kept,
    # and (plus 5 minutes) how far back a start replays call ends.
    max_call_seconds: int = 3600
    # Names this replica's consumers on the CALLS stream (each replica needs every end).
    instance_id: str = msgspec.field(default_factory=socket.gethostname)
    nats_url: str = "nats://127.0.0.1:4222"
    nats_password: str = ""
    host: str = "0.0.0.0"
    port: int = 8090
    log_level: str = "info"
    dev_mode: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.public_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"{PREFIX}PUBLIC_BASE_URL must be an http(s) URL")
        if self.release_cache_seconds < 0:
            raise SettingsError(f"{PREFIX}RELEASE_CACHE_SECONDS must not be negative")
        if not self.grant_public_keys:
            raise SettingsError(f"{PREFIX}GRANT_PUBLIC_KEYS must name at least one key")
        try:
            decode_public_keys(self.grant_public_keys)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}GRANT_PUBLIC_KEYS{exc}") from None
        if self.backend == "embedded":
            if not self.database_url:
                raise SettingsError(f"{PREFIX}DATABASE_URL must be set for the embedded backend")
            if self.master_key_id not in self.master_keys:
                raise SettingsError(f"{PREFIX}MASTER_KEY_ID must name one of {PREFIX}MASTER_KEYS")
            for kid, value in self.master_keys.items():
                if len(_b64(value)) != 32:
                    raise SettingsError(
                        f"{PREFIX}MASTER_KEYS[{kid!r}] must be base64 of a 32-byte key"
                    )
        elif not self.vault_addr:
            raise SettingsError(f"{PREFIX}VAULT_ADDR must be set for the vault backend")
        elif self.vault_auth == "approle" and not (self.vault_role_id and self.vault_secret_id):
            raise SettingsError(
                f"{PREFIX}VAULT_ROLE_ID and {PREFIX}VAULT_SECRET_ID must be set for approle"
            )
        elif self.vault_auth == "token" and not self.vault_token:
            raise SettingsError(f"{PREFIX}VAULT_TOKEN must be set for token auth")
        for origin in self.return_url_origins:
            if url_origin(origin) != origin.rstrip("/"):
                raise SettingsError(
                    f"{PREFIX}RETURN_URL_ORIGINS: {origin!r} is not an origin "
                    "(scheme://host[:port], lowercase, no path)"
                )
        if self.max_call_seconds <= 0:
            raise SettingsError(f"{PREFIX}MAX_CALL_SECONDS must be positive")
        try:
            providers = load_providers(self.oauth_providers)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}OAUTH_PROVIDERS: {exc}") from exc
        if not self.dev_mode:
            if self.nats_password.lower() in PLACEHOLDERS:
                raise SettingsError("VA_NATS_TOOLVAULT_PASSWORD is a placeholder; set a real one")
            for provider in providers.values():
                if provider.client_secret.lower() in PLACEHOLDERS:
                    raise SettingsError(
                        f"{PREFIX}OAUTH_PROVIDERS[{provider.name!r}].client_secret is a "
                        f"placeholder (or set {PREFIX}DEV_MODE=true on a developer machine)"
                    )

    def __repr__(self) -> str:  # settings hold keys: never print them
        return f"Settings(backend={self.backend!r}, public_base_url={self.public_base_url!r})"

    @property
    def redirect_uri(self) -> str:
        return self.public_base_url.rstrip("/") + "/api/v1/tools/callback"

    def public_keys(self) -> dict[str, bytes]:
        return decode_public_keys(self.grant_public_keys)

    def master_key_bytes(self) -> dict[str, bytes]:
        return {kid: _b64(value) for kid, value in self.master_keys.items()}

    def providers(self) -> dict[str, OAuthProvider]:
        return load_providers(self.oauth_providers)

    def return_origins(self) -> frozenset[str]:
        return frozenset(origin.rstrip("/") for origin in self.return_url_origins)

    def vault_config(self) -> VaultConfig:
        return VaultConfig(
            addr=self.vault_addr,
            auth=self.vault_auth,
            mount=self.vault_mount,
            path_prefix=self.vault_path_prefix,
            role=self.vault_role,
            kubernetes_mount=self.vault_kubernetes_mount,
            jwt_path=self.vault_jwt_path,
            approle_mount=self.vault_approle_mount,
            role_id=self.vault_role_id,
            secret_id=self.vault_secret_id,
            token=self.vault_token,
            namespace=self.vault_namespace,
            verify=self.vault_ca_cert or True,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            key[len(PREFIX) :].lower(): value
            for key, value in env.items()
            if key.startswith(PREFIX)
        }
        for name in _JSON_FIELDS:
            if name in values:
                try:
                    values[name] = json.loads(values[name])
                except json.JSONDecodeError as exc:
                    raise SettingsError(f"{PREFIX}{name.upper()} is not valid JSON") from exc
        if "VA_NATS_URL" in env:
            values.setdefault("nats_url", env["VA_NATS_URL"])
        if "VA_NATS_TOOLVAULT_PASSWORD" in env:
            values.setdefault("nats_password", env["VA_NATS_TOOLVAULT_PASSWORD"])
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc)
            if "`$." in message:
                field = message.split("`$.", 1)[1].split("`", 1)[0].split(".", 1)[0]
                field = field.split("[", 1)[0]
                message = message.split(" - at ", 1)[0] + f" - in {PREFIX}{field.upper()}"
            raise SettingsError(message) from exc


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""
