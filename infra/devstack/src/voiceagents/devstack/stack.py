"""The whole Voice Agents stack on loopback, every part a real process: PostgreSQL, NATS, LiveKit,
the four services (registry, tool-vault, gateway, voice worker), and stand-ins for Google: the
Calendar API (a process) and the OAuth provider (a thread of this process).

`make demo`, `make dev` and the end-to-end tests start it through `Stack`; each service runs as
`python -m voiceagents.<pkg>` with the environment a deployment would give it (its own NATS
password, the gateway's grant key pair, tool-vault's master key), logs to
`<run_dir>/logs/<service>.log`, and can be stopped, killed and restarted on its own so tests can
take a part away in the middle of a call.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from voiceagents.devstack.oauth_provider import OAuthProviderStandIn
from voiceagents.devstack.servers import (
    REPO_ROOT,
    LiveKitServer,
    NatsServer,
    PostgresServer,
    ServerStartError,
    _http_ok,
    _Process,
    free_port,
)

DEFAULT_RUN_DIR = REPO_ROOT / ".local" / "stack"
WORKER_AGENT_NAME = "voice-agent"
# Order of start-up; stopped in reverse.
SERVICES = ("registry", "toolvault", "gateway", "worker", "calendar")


@dataclass
class Service:
    """One service process: how to start it, how to tell it is ready, where it logs."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[Service], bool]
    # Generous: a loaded two-core CI machine takes a minute to import and pre-fork a service.
    ready_timeout: float = 180.0
    process: _Process | None = None
    # Where this run's lines start in the log (a restart appends to the same file).
    log_offset: int = 0

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = _Process(self.args, self.log_path, env=self.env)
        self.process.start()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.ready(self):
                return
            if not self.running:
                raise ServerStartError(
                    f"{self.name} exited during start-up; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise ServerStartError(
            f"{self.name} did not become ready in {self.ready_timeout:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; then whatever it left behind."""
        if self.process is not None:
            self.process.stop(timeout)
            self._kill_group()

    def kill(self) -> None:
        """SIGKILL to the process and its children (the voice worker's job processes), as when
        a pod or machine dies: nobody gets a chance to say goodbye."""
        if self.process is not None:
            self._kill_group()
            self.process.kill()

    def _kill_group(self) -> None:
        # Each service is started in its own session: its process group is its whole tree.
        assert self.process is not None and self.process.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def log(self) -> str:
        """What this run of the service has logged."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]


def _ready_url(url: str) -> Callable[[Service], bool]:
    return lambda _service: _http_ok(url)


def _ready_log_line(text: str) -> Callable[[Service], bool]:
    return lambda service: text in service.log()


@dataclass
class Stack:
    """Everything `make demo` runs. Use as a context manager: whatever started is stopped, also
    when start-up fails half-way or on Ctrl-C."""

    run_dir: Path = DEFAULT_RUN_DIR
    # None: Gemini when GOOGLE_API_KEY is set, else the offline stand-in model.
    model: str | None = None
    # A JSON ScriptBook for the offline model (None: the worker's built-in demo script).
    offline_script: Path | None = None
    worker_settings: dict[str, str] = field(default_factory=dict)
    twilio_auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    calendar_token: str = field(default_factory=lambda: "ya29.demo-" + secrets.token_hex(12))
    gateway_port: int = field(default_factory=free_port)
    registry_port: int = field(default_factory=free_port)
    toolvault_port: int = field(default_factory=free_port)
    calendar_port: int = field(default_factory=free_port)
    postgres: PostgresServer | None = None
    nats: NatsServer | None = None
    livekit: LiveKitServer | None = None
    services: dict[str, Service] = field(default_factory=dict)
    oauth: OAuthProviderStandIn | None = None
    admin_key: str = ""

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = "gemini" if os.environ.get("GOOGLE_API_KEY") else "offline"

    # -- addresses ---------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def toolvault_url(self) -> str:
        return f"http://127.0.0.1:{self.toolvault_port}"

    @property
    def calendar_url(self) -> str:
        """Base URL of the Google Calendar stand-in (the calendar tool's `api_base_url`)."""
        return f"http://127.0.0.1:{self.calendar_port}/calendar/v3"

    def service(self, name: str) -> Service:
        return self.services[name]

    # -- start / stop ------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):
            old.unlink()
        # Python start-up is most of the wait: run the one-shot commands while others start.
        keygen = _spawn_module("voiceagents.gateway", "keygen")
        self.postgres = PostgresServer().start()
        self.nats = NatsServer().start()
        # LiveKit tells the gateway when a participant leaves, so a call whose voice agent
        # died is failed and its room closed (the gateway's LIVEKIT_WEBHOOK_PATH).
        self.livekit = LiveKitServer(
            webhook_urls=[f"{self.gateway_url}/api/v1/livekit/webhook"]
        ).start()
        self.oauth = OAuthProviderStandIn(access_token=self.calendar_token).start()
        for database in ("registry", "toolvault"):
            self._create_database(database)
        grant_keys = _key_value_lines(_finish(keygen))
        # What `python -m voiceagents.toolvault keygen` prints: 32 random bytes, base64.
        master_key = base64.b64encode(os.urandom(32)).decode()
        self.services = {
            "registry": self._registry(grant_keys),
            "toolvault": self._toolvault(grant_keys, master_key),
            "gateway": self._gateway(grant_keys),
            "worker": self._worker(),
            "calendar": self._calendar(),
        }
        migrate = _spawn_module(
            "voiceagents.toolvault", "migrate", env=self.services["toolvault"].env
        )
        # The registry creates the NATS streams and KV buckets the others read: it goes first.
        self.services["registry"].start()
        admin_key = _spawn_module(
            "voiceagents.registry",
            "create-admin-key",
            "--name",
            "devstack",
            env=self.services["registry"].env,
        )
        for name in ("gateway", "worker", "calendar"):
            self.services[name].launch()
        _finish(migrate)  # tool-vault's tables exist before it serves
        self.services["toolvault"].launch()
        for name in SERVICES[1:]:
            self.services[name].wait_ready()
        self.admin_key = _finish(admin_key).strip()

    def stop(self) -> None:
        # SIGTERM to every service at once, then wait for each: they shut down in parallel.
        for service in self.services.values():
            if service.running:
                assert service.process is not None and service.process.proc is not None
                service.process.proc.terminate()
        for name in reversed(SERVICES):
            if name in self.services:
                self.services[name].stop()
        # The servers' data directories go away on stop: keep their logs with the services'.
        for server, log_name in (
            (self.livekit, "livekit.log"),
            (self.nats, "nats.log"),
            (self.postgres, "postgres.log"),
        ):
            if server is None:
                continue
            log = server.data_root / log_name
            if log.exists() and self.log_dir.exists():
                shutil.copyfile(log, self.log_dir / log_name)
            server.stop()
        self.livekit = self.nats = self.postgres = None
        if self.oauth is not None:
            self.oauth.stop()
            self.oauth = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what a client of the stack needs ----------------------------------------------------

    def connection(self) -> dict[str, object]:
        """Everything `make call` needs to place a call against this stack (has secrets)."""
        assert self.livekit is not None and self.nats is not None
        return {
            "gateway_url": self.gateway_url,
            "registry_url": self.registry_url,
            "toolvault_url": self.toolvault_url,
            "calendar_url": self.calendar_url,
            "admin_key": self.admin_key,
            "twilio_auth_token": self.twilio_auth_token,
            "livekit_url": self.livekit.ws_url,
            "livekit_api_key": self.livekit.api_key,
            "livekit_api_secret": self.livekit.api_secret,
            "nats_url": self.nats.url,
            "nats_ops_password": self.nats.passwords["ops"],
            "model": self.model,
            "log_dir": str(self.log_dir),
        }

    # -- the services ------------------------------------------------------------------------

    def _create_database(self, name: str) -> None:
        assert self.postgres is not None
        result = subprocess.run(
            [
                str(self.postgres.bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.postgres.port),
                "-U",
                self.postgres.user,
                name,
            ],
            env={**os.environ, "PGPASSWORD": self.postgres.password},
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ServerStartError(f"createdb {name} failed: {result.stderr.strip()}")

    def _base_env(self) -> dict[str, str]:
        assert self.nats is not None
        # Only the service's own NATS password is handed over; the rest of os.environ
        # (PATH, locale, GOOGLE_API_KEY for the worker) is inherited.
        return {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("VA_", "LIVEKIT_"))
        } | {"VA_NATS_URL": self.nats.url}

    def _nats_password(self, user: str) -> dict[str, str]:
        assert self.nats is not None
        return {f"VA_NATS_{user.upper()}_PASSWORD": self.nats.passwords[user]}

    def _service(
        self,
        name: str,
        module: str,
        args: list[str],
        env: dict[str, str],
        ready: Callable[[Service], bool],
    ) -> Service:
        return Service(
            name=name,
            args=[sys.executable, "-m", module, *args],
            env=env,
            log_path=self.log_dir / f"{name}.log",
            ready=ready,
        )

    def _registry(self, grant_keys: dict[str, str]) -> Service:
        assert self.postgres is not None
        env = self._base_env() | self._nats_password("registry")
        env |= {
            "VA_REGISTRY_DSN": self.postgres.dsn("registry"),
            "VA_REGISTRY_GRANT_PUBLIC_KEYS": grant_keys["VA_REGISTRY_GRANT_PUBLIC_KEYS"],
            "VA_REGISTRY_HOST": "127.0.0.1",
            "VA_REGISTRY_PORT": str(self.registry_port),
            # Key checks are cached for a short while only; tests revoke nothing.
            "VA_REGISTRY_AUTH_CACHE_SECONDS": "5",
        }
        return self._service(
            "registry",
            "voiceagents.registry",
            ["serve", "--migrate"],
            env,
            _ready_url(f"{self.registry_url}/readyz"),
        )

    def _toolvault(self, grant_keys: dict[str, str], master_key: str) -> Service:
        assert self.postgres is not None and self.oauth is not None
        env = self._base_env() | self._nats_password("toolvault")
        env |= {
            "VA_TOOLVAULT_PUBLIC_BASE_URL": self.toolvault_url,
            "VA_TOOLVAULT_GRANT_PUBLIC_KEYS": grant_keys["VA_TOOLVAULT_GRANT_PUBLIC_KEYS"],
            "VA_TOOLVAULT_BACKEND": "embedded",
            "VA_TOOLVAULT_DATABASE_URL": self.postgres.dsn("toolvault"),
            "VA_TOOLVAULT_MASTER_KEYS": json.dumps({"devstack-1": master_key}),
            "VA_TOOLVAULT_MASTER_KEY_ID": "devstack-1",
            "VA_TOOLVAULT_INSTANCE_ID": "devstack",
            "VA_TOOLVAULT_HOST": "127.0.0.1",
            "VA_TOOLVAULT_PORT": str(self.toolvault_port),
            "VA_TOOLVAULT_OAUTH_PROVIDERS": json.dumps({"google": self.oauth.provider_config()}),
        }
        return self._service(
            "toolvault",
            "voiceagents.toolvault",
            ["serve"],
            env,
            _ready_url(f"{self.toolvault_url}/readyz"),
        )

    def _gateway(self, grant_keys: dict[str, str]) -> Service:
        assert self.livekit is not None
        env = self._base_env() | self._nats_password("gateway")
        env |= {
            "VA_GATEWAY_PUBLIC_BASE_URL": self.gateway_url,
            "VA_GATEWAY_TWILIO_AUTH_TOKEN": self.twilio_auth_token,
            "VA_GATEWAY_LIVEKIT_URL": self.livekit.url,
            "VA_GATEWAY_LIVEKIT_API_KEY": self.livekit.api_key,
            "VA_GATEWAY_LIVEKIT_API_SECRET": self.livekit.api_secret,
            # No SIP bridge here: the simulated caller joins the room the TwiML names directly.
            "VA_GATEWAY_LIVEKIT_SIP_HOST": "127.0.0.1:5060",
            "VA_GATEWAY_SIP_USERNAME": "devstack",
            "VA_GATEWAY_SIP_PASSWORD": secrets.token_hex(12),
            "VA_GATEWAY_GRANT_SIGNING_KEY": grant_keys["VA_GATEWAY_GRANT_SIGNING_KEY"],
            "VA_GATEWAY_GRANT_KEY_ID": grant_keys["VA_GATEWAY_GRANT_KEY_ID"],
            "VA_GATEWAY_WORKER_AGENT_NAME": WORKER_AGENT_NAME,
            "VA_GATEWAY_HOST": "127.0.0.1",
            "VA_GATEWAY_PORT": str(self.gateway_port),
        }
        return self._service(
            "gateway",
            "voiceagents.gateway",
            ["serve"],
            env,
            _ready_url(f"{self.gateway_url}/readyz"),
        )

    def _worker(self) -> Service:
        assert self.livekit is not None
        metrics_dir = self.run_dir / "worker-metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        env = self._base_env() | self._nats_password("worker") | self.livekit.environment()
        env |= {
            "VA_WORKER_AGENT_NAME": WORKER_AGENT_NAME,
            "VA_WORKER_MODEL": str(self.model),
            "VA_WORKER_HTTP_PORT": str(free_port()),
            "VA_WORKER_METRICS_PORT": str(free_port()),
            "VA_WORKER_PHRASE_CACHE_DIR": str(self.run_dir / "phrases"),
            "VA_WORKER_DRAIN_TIMEOUT_SECONDS": "5",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        if self.offline_script is not None:
            env["VA_WORKER_OFFLINE_SCRIPT"] = str(self.offline_script)
        env |= self.worker_settings
        return self._service(
            "worker",
            "voiceagents.worker",
            ["start"],
            env,
            # Registered with LiveKit and a warm job process to take the first call.
            lambda service: all(
                line in service.log() for line in ('"registered worker"', '"process initialized"')
            ),
        )

    def _calendar(self) -> Service:
        return self._service(
            "calendar",
            "voiceagents.worker.standins",
            ["calendar", "--port", str(self.calendar_port), "--token", self.calendar_token],
            self._base_env(),
            _ready_log_line("Google Calendar stand-in at"),
        )


def _spawn_module(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A one-shot `python -m <module> <args>` command, started in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(command: subprocess.Popen[str]) -> str:
    """The command's output, once it has exited; its error output if it failed."""
    out, err = command.communicate(timeout=120)
    if command.returncode != 0:
        raise ServerStartError(f"{command.args!r} failed:\n{err[-2000:]}")
    return out


def _key_value_lines(output: str) -> dict[str, str]:
    """`NAME=value` lines (values may be single-quoted), as printed by `gateway keygen`."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        if "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip().strip("'")
    return values
