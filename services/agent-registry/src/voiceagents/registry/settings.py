"""The registry's settings, read once from `VA_REGISTRY_*` (plus the shared `VA_NATS_*`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from voiceagents.contracts.grants import decode_public_keys

PREFIX = "VA_REGISTRY_"
# Values that say "nobody configured this"; refused outside dev mode.
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "secret", "dev", "devsecret", "placeholder"})
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # postgresql://user:password@host:port/database
    dsn: str
    # The gateway's call-grant public keys, {kid: base64 Ed25519 public key} (JSON in the
    # environment, as tool-vault's): a voice worker's knowledge-base search carries its call's
    # grant. `serve` requires them; the one-off commands do not use them.
    grant_public_keys: dict[str, str] = {}
    nats_url: str = "nats://127.0.0.1:4222"
    nats_password: str = ""
    host: str = "0.0.0.0"
    port: int = 8081
    log_level: str = "info"
    dev_mode: bool = False
    pool_min_size: int = 2
    pool_max_size: int = 20
    # How long a verified API key is trusted from memory before PostgreSQL is asked again
    # (a revoked key stops working within this many seconds on every replica).
    auth_cache_seconds: float = 5.0
    # Where tool-vault sends the admin's browser after an OAuth consent, when the request
    # does not say.
    oauth_return_url: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.dsn)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise SettingsError(f"{PREFIX}DSN must be a postgresql://user:password@host/db URL")
        if not 1 <= self.pool_min_size <= self.pool_max_size:
            raise SettingsError(f"{PREFIX}POOL_MIN_SIZE must be >= 1 and <= {PREFIX}POOL_MAX_SIZE")
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingsError(f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        try:
            decode_public_keys(self.grant_public_keys)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}GRANT_PUBLIC_KEYS{exc}") from None
        if self.auth_cache_seconds < 0:
            raise SettingsError(f"{PREFIX}AUTH_CACHE_SECONDS must not be negative")
        if not self.dev_mode:
            if self.nats_password.lower() in PLACEHOLDERS:
                raise SettingsError(
                    "VA_NATS_REGISTRY_PASSWORD is a placeholder; set a real secret "
                    f"(or {PREFIX}DEV_MODE=true on a developer machine)"
                )
            if (parts.password or "").lower() in PLACEHOLDERS:
                raise SettingsError(
                    f"the password in {PREFIX}DSN is a placeholder; set a real secret "
                    f"(or {PREFIX}DEV_MODE=true on a developer machine)"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            key[len(PREFIX) :].lower(): value
            for key, value in env.items()
            if key.startswith(PREFIX)
        }
        if "grant_public_keys" in values:
            try:
                values["grant_public_keys"] = json.loads(values["grant_public_keys"])
            except ValueError:
                raise SettingsError(f"{PREFIX}GRANT_PUBLIC_KEYS must be a JSON object") from None
        if "VA_NATS_URL" in env:
            values.setdefault("nats_url", env["VA_NATS_URL"])
        if "VA_NATS_REGISTRY_PASSWORD" in env:
            values.setdefault("nats_password", env["VA_NATS_REGISTRY_PASSWORD"])
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            # msgspec names the field as `$.field`; say which environment variable that is.
            message = str(exc)
            if "`$." in message:
                field = message.split("`$.", 1)[1].split("`", 1)[0]
                message = message.replace(f"`$.{field}`", f"{PREFIX}{field.upper()}")
            raise SettingsError(message) from exc

    def public_keys(self) -> dict[str, bytes]:
        return decode_public_keys(self.grant_public_keys)
