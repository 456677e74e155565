"""Real PostgreSQL, NATS (JetStream) and LiveKit servers on loopback, in throw-away directories.

Tests, benchmarks and `make demo` all start their servers through these classes, so what the
tests exercise is what the demo runs. Binaries come from `infra/install.sh` (see versions.env).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[5]
BIN_DIR = Path(os.environ.get("VA_BIN_DIR", REPO_ROOT / ".local" / "bin"))
NATS_CONFIG = REPO_ROOT / "infra" / "nats" / "nats-server.conf"

# The NATS users of infra/nats/nats-server.conf; each one's password comes from the environment.
NATS_USERS = ("registry", "gateway", "toolvault", "worker", "ops", "sys")


class ServerStartError(RuntimeError):
    """A local server did not come up; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _require_binary(path: Path, what: str) -> Path:
    if not path.exists():
        raise ServerStartError(f"{what} is not installed at {path}; run `make infra-install`")
    return path


def _wait_until(ready: Callable[[], bool], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise ServerStartError(f"{what} did not become ready in {timeout:.0f}s; log {log}:\n{tail}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 - loopback only
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class _Process:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _Server(ABC):
    """Context-manager plumbing shared by the three servers."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class PostgresServer(_Server):
    """A throw-away PostgreSQL cluster (Debian package's initdb and pg_ctl), not the system one."""

    data_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="va-pg-")))
    port: int = field(default_factory=free_port)
    user: str = "voiceagents"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    _as_user: str | None = None

    @property
    def bin_dir(self) -> Path:
        configured = os.environ.get("VA_PG_BIN_DIR")
        if configured:
            return Path(configured)
        major = _read_versions().get("POSTGRES_MAJOR", "15")
        return Path(f"/usr/lib/postgresql/{major}/bin")

    @property
    def data_dir(self) -> Path:
        return self.data_root / "data"

    @property
    def log_path(self) -> Path:
        return self.data_root / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run_as_owner(self, args: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root; CI runs as root, so hand the cluster to `postgres`.
        if self._as_user is None:
            return args
        return ["runuser", "-u", self._as_user, "--", *args]

    def start(self) -> Self:
        initdb = _require_binary(self.bin_dir / "initdb", "PostgreSQL (Debian package postgresql)")
        if os.geteuid() == 0:
            self._as_user = "postgres"
            owner = pwd.getpwnam(self._as_user)
            os.chown(self.data_root, owner.pw_uid, owner.pw_gid)
        self.data_root.chmod(0o700)
        pwfile = self.data_root / "pwfile"
        pwfile.write_text(self.password)
        if self._as_user:
            owner = pwd.getpwnam(self._as_user)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            self._run_as_owner(
                [
                    str(initdb),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        # Durability is not under test here; fsync off makes the throw-away cluster fast.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        result = subprocess.run(
            self._run_as_owner(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            tail = (
                self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            )
            raise ServerStartError(f"PostgreSQL did not start: {result.stderr.strip()}\n{tail}")

    def stop(self) -> None:
        if self.data_dir.exists():
            subprocess.run(
                self._run_as_owner(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "stop",
                    ]
                ),
                capture_output=True,
            )
        shutil.rmtree(self.data_root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server but keep its data, to test what happens while PostgreSQL is down."""
        subprocess.run(
            self._run_as_owner(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            ),
            capture_output=True,
            check=True,
        )

    def resume(self) -> None:
        self._pg_ctl_start()


@dataclass
class NatsServer(_Server):
    """nats-server with JetStream, started with the repo's own config (infra/nats/nats-server.conf).

    Every service user's password is generated here and exported to the server through the
    environment, exactly as a deployment passes them.
    """

    data_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="va-nats-")))
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    passwords: dict[str, str] = field(
        # Letter first, hex after: nats-server parses an env value starting with a digit or "-" as a
        # number and refuses the config.
        default_factory=lambda: {user: "p" + secrets.token_hex(18) for user in NATS_USERS}
    )
    config: Path = NATS_CONFIG
    _process: _Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def credentials(self, user: str) -> dict[str, str]:
        """Keyword arguments for `nats.connect` as that service: user, password, inbox prefix."""
        return {
            "servers": self.url,
            "user": user,
            "password": self.passwords[user],
            "inbox_prefix": f"_INBOX_{user}",
        }

    def environment(self) -> dict[str, str]:
        """The VA_NATS_* variables a service process needs to reach this server as any user."""
        env = {"VA_NATS_URL": self.url}
        for user, password in self.passwords.items():
            env[f"VA_NATS_{user.upper()}_PASSWORD"] = password
        return env

    def start(self) -> Self:
        binary = _require_binary(BIN_DIR / "nats-server", "nats-server")
        env = {**os.environ, **self.environment()}
        self._process = _Process(
            [
                str(binary),
                "-c",
                str(self.config),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-sd",
                str(self.data_root / "jetstream"),
            ],
            self.data_root / "nats.log",
            env=env,
        )
        self._process.start()
        _wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"),
            "nats-server",
            self._process.log_path,
            timeout=20,
        )
        return self

    def stop(self) -> None:
        if self._process:
            self._process.stop()
        shutil.rmtree(self.data_root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server but keep its JetStream data, to test outages."""
        if self._process:
            self._process.stop()

    def resume(self) -> None:
        if self._process is None:
            raise ServerStartError("nats-server was never started")
        self._process.start()
        _wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"),
            "nats-server",
            self._process.log_path,
            timeout=20,
        )


@dataclass
class LiveKitServer(_Server):
    """livekit-server in dev mode on loopback, with its own ports so several can run at once."""

    data_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="va-livekit-")))
    port: int = field(default_factory=free_port)
    rtc_tcp_port: int = field(default_factory=free_port)
    rtc_udp_port: int = field(default_factory=free_port)
    api_key: str = "devkey"
    api_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    # LiveKit posts room/participant webhooks here, signed with api_key/api_secret.
    webhook_urls: list[str] = field(default_factory=list)
    _process: _Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        return {
            "LIVEKIT_URL": self.ws_url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }

    def start(self) -> Self:
        binary = _require_binary(BIN_DIR / "livekit-server", "livekit-server")
        config = self.data_root / "livekit.yaml"
        config.write_text(
            "\n".join(
                [
                    f"port: {self.port}",
                    "bind_addresses: ['127.0.0.1']",
                    "rtc:",
                    f"  tcp_port: {self.rtc_tcp_port}",
                    f"  udp_port: {self.rtc_udp_port}",
                    "  use_external_ip: false",
                    "  node_ip: 127.0.0.1",
                    "keys:",
                    f"  {self.api_key}: {self.api_secret}",
                    "logging:",
                    "  level: info",
                    *self._webhook_config(),
                    "",
                ]
            )
        )
        self._process = _Process(
            [str(binary), "--dev", "--config", str(config), "--bind", "127.0.0.1"],
            self.data_root / "livekit.log",
        )
        self._process.start()
        _wait_until(lambda: _http_ok(self.url), "livekit-server", self._process.log_path, 30)
        return self

    def _webhook_config(self) -> list[str]:
        if not self.webhook_urls:
            return []
        return [
            "webhook:",
            f"  api_key: {self.api_key}",
            "  urls:",
            *(f"    - {url}" for url in self.webhook_urls),
        ]

    def stop(self) -> None:
        if self._process:
            self._process.stop()
        shutil.rmtree(self.data_root, ignore_errors=True)

    def pause(self) -> None:
        if self._process:
            self._process.stop()

    def resume(self) -> None:
        if self._process is None:
            raise ServerStartError("livekit-server was never started")
        self._process.start()
        _wait_until(lambda: _http_ok(self.url), "livekit-server", self._process.log_path, 30)


def _read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in (REPO_ROOT / "infra" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key] = value
    return versions
