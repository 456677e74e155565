"""`python -m voiceagents.devstack`: what runs behind `make demo`, `make dev`, `make infra-up`."""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import click

from voiceagents.devstack.servers import (
    REPO_ROOT,
    LiveKitServer,
    NatsServer,
    PostgresServer,
)

STATE_FILE = REPO_ROOT / ".local" / "stack" / "infra.json"


def _start_infra(stack: ExitStack) -> tuple[PostgresServer, NatsServer, LiveKitServer]:
    postgres = stack.enter_context(PostgresServer())
    click.echo(f"  PostgreSQL  127.0.0.1:{postgres.port}   (log {postgres.log_path})")
    nats_server = stack.enter_context(NatsServer())
    click.echo(f"  NATS        {nats_server.url}  (JetStream, per-service users)")
    livekit = stack.enter_context(LiveKitServer())
    click.echo(f"  LiveKit     {livekit.ws_url}   (--dev, loopback)")
    return postgres, nats_server, livekit


@click.group()
def cli() -> None:
    """Run the Voice Agents stack on loopback."""


@cli.command()
def demo() -> None:
    """Start the stack, show what runs, and stop it again."""
    click.echo("Starting the stack on loopback (real PostgreSQL, NATS, LiveKit):")
    with ExitStack() as stack:
        _start_infra(stack)
        click.echo("Stack is up. Stopping it again (make dev keeps it running).")
    click.echo("Stopped; nothing is left running.")


@cli.command()
def dev() -> None:
    """Start the stack and keep it up until Ctrl-C."""
    with ExitStack() as stack:
        _start_infra(stack)
        click.echo("Stack is up; Ctrl-C stops it.")
        try:
            signal.pause()
        except KeyboardInterrupt:
            click.echo("Stopping.")


@cli.command("infra-up")
def infra_up() -> None:
    """Start PostgreSQL, NATS and LiveKit in the background; `infra-down` stops them."""
    if STATE_FILE.exists():
        raise click.ClickException(f"already running (see {STATE_FILE}); run `make infra-down`")
    pid = os.fork()
    if pid == 0:
        os.setsid()
        with ExitStack() as stack:
            postgres, nats_server, livekit = _start_infra(stack)
            STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "pid": os.getpid(),
                "postgres_dsn": postgres.dsn(),
                "nats_url": nats_server.url,
                "nats_env": nats_server.environment(),
                "livekit": livekit.environment(),
            }
            STATE_FILE.write_text(json.dumps(state, indent=2))
            STATE_FILE.chmod(0o600)

            def shut_down(*_: object) -> None:
                stack.close()
                os._exit(0)

            signal.signal(signal.SIGTERM, shut_down)
            while True:
                signal.pause()
    deadline = time.monotonic() + 60
    while not STATE_FILE.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not STATE_FILE.exists():
        raise click.ClickException("the stack did not come up within 60 s")
    click.echo(f"Infrastructure is up; connection details (with passwords) in {STATE_FILE}")


@cli.command("infra-down")
def infra_down() -> None:
    """Stop what `infra-up` started."""
    if not STATE_FILE.exists():
        click.echo("Nothing is running.")
        return
    pid = int(json.loads(Path(STATE_FILE).read_text())["pid"])
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    STATE_FILE.unlink()
    click.echo("Stopped.")


if __name__ == "__main__":
    cli()
