"""The gateway's settings, read once from `VA_GATEWAY_*` (plus the shared `VA_NATS_*`)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

PREFIX = "VA_GATEWAY_"
# Values that say "nobody configured this"; refused outside dev mode.
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "secret", "dev", "devsecret", "placeholder"})


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Public URL Twilio is configured with (scheme://host[:port][/prefix]); signatures cover it,
    # so it must be what Twilio sees, not what a TLS-terminating proxy forwards to us.
    public_base_url: str
    twilio_auth_token: str
    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str
    # Host (and port) of LiveKit SIP as Twilio dials it.
    livekit_sip_host: str
    sip_username: str
    sip_password: str
    # Comma-separated IPs or CIDR blocks LiveKit SIP's inbound trunk admits (Twilio's SIP
    # signalling ranges); empty admits any address that has the credentials. See sip.py.
    sip_allowed_addresses: str = ""
    grant_signing_key: str
    grant_key_id: str
    nats_url: str = "nats://127.0.0.1:4222"
    nats_password: str = ""
    worker_agent_name: str = "voice-agent"
    livekit_budget_seconds: float = 2.0
    # Longest call: the grant expires then, and Twilio's <Dial timeLimit> ends the call then.
    max_call_seconds: int = 3600
    # A room nobody joins closes after this long (the SIP leg never arrived).
    room_empty_timeout_seconds: int = 60
    # After a voice agent leaves a call room, how long before the gateway checks whether it was
    # a normal end or the caller was left alone (LiveKit webhook).
    agent_lost_grace_seconds: float = 3.0
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "info"
    dev_mode: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.public_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"{PREFIX}PUBLIC_BASE_URL must be an http(s) URL")
        if parts.query or parts.fragment:
            raise SettingsError(f"{PREFIX}PUBLIC_BASE_URL must not have a query or fragment")
        try:
            raw = base64.b64decode(self.grant_signing_key, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise SettingsError(
                f"{PREFIX}GRANT_SIGNING_KEY must be base64 of a 32-byte Ed25519 private key"
            )
        if not self.grant_key_id:
            raise SettingsError(f"{PREFIX}GRANT_KEY_ID must be set")
        if self.livekit_budget_seconds <= 0:
            raise SettingsError(f"{PREFIX}LIVEKIT_BUDGET_SECONDS must be positive")
        if self.agent_lost_grace_seconds < 0:
            raise SettingsError(f"{PREFIX}AGENT_LOST_GRACE_SECONDS must not be negative")
        if self.max_call_seconds <= 0:
            raise SettingsError(f"{PREFIX}MAX_CALL_SECONDS must be positive")
        for address in self.sip_allowed_networks:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise SettingsError(
                    f"{PREFIX}SIP_ALLOWED_ADDRESSES: {address!r} is not an IP address or CIDR block"
                ) from None
        if not self.dev_mode:
            for name in ("twilio_auth_token", "livekit_api_secret", "sip_password"):
                if getattr(self, name).lower() in PLACEHOLDERS:
                    raise SettingsError(
                        f"{PREFIX}{name.upper()} is a placeholder; set a real secret "
                        f"(or {PREFIX}DEV_MODE=true on a developer machine)"
                    )

    @property
    def base_url(self) -> str:
        return self.public_base_url.rstrip("/")

    @property
    def sip_allowed_networks(self) -> list[str]:
        return [part.strip() for part in self.sip_allowed_addresses.split(",") if part.strip()]

    @property
    def signing_key_bytes(self) -> bytes:
        return base64.b64decode(self.grant_signing_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, str] = {
            key[len(PREFIX) :].lower(): value
            for key, value in env.items()
            if key.startswith(PREFIX)
        }
        if "VA_NATS_URL" in env:
            values.setdefault("nats_url", env["VA_NATS_URL"])
        if "VA_NATS_GATEWAY_PASSWORD" in env:
            values.setdefault("nats_password", env["VA_NATS_GATEWAY_PASSWORD"])
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            # msgspec names the field as `$.field`; say which environment variable that is.
            message = str(exc)
            if "`$." in message:
                field = message.split("`$.", 1)[1].split("`", 1)[0]
                message = message.replace(f"`$.{field}`", f"{PREFIX}{field.upper()}")
            raise SettingsError(message) from exc
