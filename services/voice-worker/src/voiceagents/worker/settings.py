"""The voice worker's settings, read once from `VA_WORKER_*` (plus `VA_NATS_*` and `LIVEKIT_*`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

PREFIX = "VA_WORKER_"
# Values that say "nobody configured this"; refused outside dev mode.
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "secret", "dev", "devsecret", "placeholder"})


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Explicit dispatch only: the gateway dispatches calls to this agent name.
    agent_name: str = "voice-agent"
    # Concurrent calls this worker admits (exact count, reported to LiveKit as load).
    max_calls: int = 4
    # livekit-server's `target_load` (its default): a full worker reports exactly this load.
    livekit_target_load: float = 0.7
    # "gemini" in production; "offline" is the stand-in model (tests, benchmarks, make demo).
    model: Literal["gemini", "offline"] = "gemini"
    google_api_key: str = ""
    # JSON ScriptBook for the offline model; empty: the built-in demo script.
    offline_script: str = ""
    offline_first_audio_ms: float = 300.0
    # Comma-separated packages whose BaseTool subclasses are this worker's code tools.
    tool_packages: str = "voiceagents.worker.tools.builtin"
    credentials_timeout_seconds: float = 2.0
    # How long the greeting may wait for its audio to be rendered (first call of a new text).
    greeting_render_seconds: float = 3.0
    filler_after_seconds: float = 1.0
    filler_text: str = "One moment, please."
    phrase_cache_dir: str = ""
    # SIGTERM: stop taking calls, let the running ones finish for at most this long.
    drain_timeout_seconds: int = 600
    idle_processes: int = 2
    http_port: int = 8081
    metrics_port: int = 9464
    nats_url: str = "nats://127.0.0.1:4222"
    nats_password: str = ""
    livekit_url: str = ""
    livekit_api_key: str = ""
    livekit_api_secret: str = ""
    log_level: str = "INFO"
    dev_mode: bool = False
    # The worker's own Twilio account: `transfer_to_human` updates the live call through Twilio's
    # REST API with it (an API key pair, or the auth token). Without it, no call can transfer.
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_api_key_sid: str = ""
    twilio_api_key_secret: str = ""
    # Only tests change it; an agent's config never decides where these credentials go.
    twilio_api_base_url: str = "https://api.twilio.com"

    def __post_init__(self) -> None:
        if self.max_calls < 1:
            raise SettingsError(f"{PREFIX}MAX_CALLS must be at least 1")
        if not 0 < self.livekit_target_load <= 1:
            raise SettingsError(f"{PREFIX}LIVEKIT_TARGET_LOAD must be in (0, 1]")
        if not self.agent_name:
            raise SettingsError(f"{PREFIX}AGENT_NAME must be set (explicit dispatch only)")
        if self.offline_script and not Path(self.offline_script).is_file():
            raise SettingsError(f"{PREFIX}OFFLINE_SCRIPT: no such file {self.offline_script!r}")
        if self.dev_mode:
            return
        secrets = {"VA_NATS_WORKER_PASSWORD": self.nats_password}
        secrets["LIVEKIT_API_SECRET"] = self.livekit_api_secret
        if self.model == "gemini":
            secrets["GOOGLE_API_KEY"] = self.google_api_key
        if self.twilio_account_sid and not self.twilio_api_key_sid:
            secrets[f"{PREFIX}TWILIO_AUTH_TOKEN"] = self.twilio_auth_token
        if self.twilio_api_key_sid:
            secrets[f"{PREFIX}TWILIO_API_KEY_SECRET"] = self.twilio_api_key_secret
        for variable, value in secrets.items():
            if value.lower() in PLACEHOLDERS:
                raise SettingsError(
                    f"{variable} is a placeholder; set a real secret "
                    f"(or {PREFIX}DEV_MODE=true on a developer machine)"
                )

    @property
    def twilio_secrets(self) -> dict[str, str] | None:
        """The secrets `call_control` signs Twilio requests with; None when not configured."""
        if not self.twilio_account_sid:
            return None
        if self.twilio_api_key_sid and self.twilio_api_key_secret:
            return {
                "account_sid": self.twilio_account_sid,
                "api_key_sid": self.twilio_api_key_sid,
                "api_key_secret": self.twilio_api_key_secret,
            }
        if self.twilio_auth_token:
            return {"account_sid": self.twilio_account_sid, "auth_token": self.twilio_auth_token}
        return None

    @property
    def packages(self) -> list[str]:
        return [name.strip() for name in self.tool_packages.split(",") if name.strip()]

    @property
    def phrase_cache(self) -> Path:
        if self.phrase_cache_dir:
            return Path(self.phrase_cache_dir)
        return Path(tempfile.gettempdir()) / "voiceagents-phrases"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, str] = {
            key[len(PREFIX) :].lower(): value
            for key, value in env.items()
            if key.startswith(PREFIX)
        }
        shared = {
            "nats_url": "VA_NATS_URL",
            "nats_password": "VA_NATS_WORKER_PASSWORD",
            "livekit_url": "LIVEKIT_URL",
            "livekit_api_key": "LIVEKIT_API_KEY",
            "livekit_api_secret": "LIVEKIT_API_SECRET",
            "google_api_key": "GOOGLE_API_KEY",
        }
        for field, variable in shared.items():
            if variable in env:
                values.setdefault(field, env[variable])
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc)
            if "`$." in message:
                field = message.split("`$.", 1)[1].split("`", 1)[0]
                message = message.replace(f"`$.{field}`", f"{PREFIX}{field.upper()}")
            raise SettingsError(message) from exc
