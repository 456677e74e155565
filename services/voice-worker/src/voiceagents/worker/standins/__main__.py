"""`python -m voiceagents.worker.standins calendar --port 8085 --token T` — run a stand-in API
as a process (for `make demo`), until interrupted. Each stand-in is documented in its module."""

from __future__ import annotations

import asyncio
import contextlib

import click

from voiceagents.worker.standins.google_calendar import GoogleCalendarStandIn


@click.group()
def main() -> None:
    """Local stand-ins for the remote APIs the built-in tools call."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8085, show_default=True, type=int)
@click.option(
    "--token", "tokens", multiple=True, help="An OAuth access token to accept (repeatable)."
)
def calendar(host: str, port: int, tokens: tuple[str, ...]) -> None:
    """The Google Calendar v3 stand-in; its base URL is printed when it listens."""

    async def serve() -> None:
        async with GoogleCalendarStandIn(host=host, port=port) as stand_in:
            for token in tokens:
                stand_in.grant(token)
            click.echo(f"Google Calendar stand-in at {stand_in.base_url}", err=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
