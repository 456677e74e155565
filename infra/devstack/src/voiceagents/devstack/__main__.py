"""`python -m voiceagents.devstack`: what runs behind `make demo`, `make dev`, `make call`,
`make infra-up`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import click

from voiceagents.devstack.demo import (
    Admin,
    DemoAgent,
    booking_call,
    create_demo_agent,
    write_offline_script,
)
from voiceagents.devstack.servers import (
    REPO_ROOT,
    LiveKitServer,
    NatsServer,
    PostgresServer,
)
from voiceagents.devstack.stack import DEFAULT_RUN_DIR, Stack

STATE_FILE = REPO_ROOT / ".local" / "stack" / "infra.json"
DEV_FILE = DEFAULT_RUN_DIR / "dev.json"


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


def _banner(model: str) -> None:
    if model == "gemini":
        click.echo("Model: Gemini Live (GOOGLE_API_KEY is set).")
    else:
        click.echo(
            "Model: the offline stand-in (set GOOGLE_API_KEY for Gemini Live). It hears speech,\n"
            "not words: it follows a script, calls the calendar tool and reads results verbatim."
        )


def _stop_on_sigterm() -> None:
    # SIGTERM unwinds like Ctrl-C, so the stack's context manager stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _start_stack() -> Stack:
    offline_script = write_offline_script(DEFAULT_RUN_DIR / "offline-script.json")
    stack = Stack(offline_script=offline_script)
    _banner(str(stack.model))
    click.echo("Starting the stack on loopback (real PostgreSQL, NATS, LiveKit, four services)...")
    started = time.perf_counter()
    stack.start()
    click.echo(f"Stack is up in {time.perf_counter() - started:.1f} s:")
    assert stack.postgres and stack.nats and stack.livekit
    click.echo(f"  PostgreSQL   127.0.0.1:{stack.postgres.port}")
    click.echo(f"  NATS         {stack.nats.url}")
    click.echo(f"  LiveKit      {stack.livekit.ws_url}")
    click.echo(f"  registry     {stack.registry_url}")
    click.echo(f"  tool-vault   {stack.toolvault_url}")
    click.echo(f"  gateway      {stack.gateway_url}")
    click.echo(f"  calendar     {stack.calendar_url}  (Google Calendar stand-in)")
    return stack


async def _set_up_agent(conn: dict[str, Any]) -> DemoAgent:
    async with Admin(conn["registry_url"], conn["admin_key"]) as admin:
        agent = await create_demo_agent(admin, conn["calendar_url"])
    click.echo(
        f"Agent {agent.name!r} answers {agent.phone_number}; Google Calendar tool connected "
        "through the OAuth flow (stand-in provider)."
    )
    return agent


async def _call(conn: dict[str, Any], phone_number: str) -> None:
    click.echo(f"Calling {phone_number} (Twilio-signed webhook, SIP-kind caller, espeak-ng):")
    call_sid = await booking_call(conn, phone_number, click.echo)
    async with Admin(conn["registry_url"], conn["admin_key"]) as admin:
        call = await admin.wait_for_call(call_sid)
    click.echo(f"Call log (GET /api/v1/calls/{call_sid}):")
    click.echo(
        f"  status {call['status']}, ended by {call['ended_by']}, "
        f"{call['duration_seconds'] or 0:.1f} s, agent setup {call['setup_ms'] or 0:.0f} ms"
    )
    for tool in call["tool_invocations"]:
        click.echo(
            f"  tool {tool['tool_name']}.{tool['function']}: {tool['outcome']} "
            f"in {tool['duration_ms']:.0f} ms"
        )


@cli.command()
def demo() -> None:
    """Start the stack, place a simulated phone call, stop everything."""
    _stop_on_sigterm()
    stack = _start_stack()
    try:
        conn = stack.connection()

        async def run() -> None:
            agent = await _set_up_agent(conn)
            await _call(conn, agent.phone_number)

        asyncio.run(run())
    finally:
        click.echo("Stopping the stack...")
        stack.stop()
    click.echo(f"Stopped; nothing is left running. Logs: {stack.log_dir}/")


@cli.command()
def dev() -> None:
    """Start the stack with the demo agent and keep it up until Ctrl-C (`make call` calls it)."""
    _stop_on_sigterm()
    stack = _start_stack()
    try:
        conn = stack.connection()
        agent = asyncio.run(_set_up_agent(conn))
        DEV_FILE.write_text(json.dumps({**conn, "phone_number": agent.phone_number}, indent=2))
        DEV_FILE.chmod(0o600)
        click.echo(f"Connection details (with secrets) in {DEV_FILE}. `make call` places a call.")
        click.echo(f"Logs: {stack.log_dir}/. Ctrl-C stops everything.")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("Stopping the stack...")
        DEV_FILE.unlink(missing_ok=True)
        stack.stop()


@cli.command()
def call() -> None:
    """Place another simulated call against a running `make dev`."""
    if not DEV_FILE.exists():
        raise click.ClickException(f"no running stack ({DEV_FILE} is missing); run `make dev`")
    conn = json.loads(DEV_FILE.read_text())
    asyncio.run(_call(conn, conn["phone_number"]))
    click.echo(f"Logs: {conn['log_dir']}/")


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
