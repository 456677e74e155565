"""`python -m voiceagents.gateway serve | keygen | provision-sip`."""

from __future__ import annotations

import asyncio
import gc
import json
import sys

import click

from voiceagents.gateway.settings import Settings, SettingsError


@click.group()
def cli() -> None:
    """Voice Agents gateway: Twilio webhooks to LiveKit rooms."""


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
def serve() -> None:
    """Serve the webhooks (settings from VA_GATEWAY_*, VA_NATS_*)."""
    import uvicorn

    from voiceagents.gateway.app import create_app
    from voiceagents.gateway.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    gc.freeze()  # start-up objects are long-lived; keep them out of every collection
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        # uvloop and httptools when installed (Linux): a shorter hot path per webhook.
        loop="auto",
        http="auto",
        proxy_headers=False,
    )


@cli.command()
@click.option("--key-id", default="gateway-1", show_default=True, help="The key's `kid`.")
def keygen(key_id: str) -> None:
    """Print a new call-grant key pair: the gateway's settings, tool-vault's and the registry's
    public keys."""
    from voiceagents.gateway.grants import generate_key_pair

    for name, value in generate_key_pair(key_id).items():
        click.echo(
            f"{name}='{value}'" if name.endswith("_GRANT_PUBLIC_KEYS") else f"{name}={value}"
        )


@cli.command("provision-sip")
def provision_sip_command() -> None:
    """Create or update LiveKit SIP's inbound trunk and callee dispatch rule (idempotent)."""
    from livekit import api

    from voiceagents.gateway.sip import provision_sip

    settings = _settings()

    async def run() -> None:
        async with api.LiveKitAPI(
            settings.livekit_url, settings.livekit_api_key, settings.livekit_api_secret
        ) as lk:
            try:
                result = await provision_sip(
                    lk,
                    username=settings.sip_username,
                    password=settings.sip_password,
                    allowed_addresses=settings.sip_allowed_networks,
                )
            except api.TwirpError as exc:
                raise click.ClickException(
                    f"LiveKit at {settings.livekit_url} refused the SIP API request: {exc.message}"
                ) from exc
        click.echo(json.dumps(result.__dict__))
        if not settings.sip_allowed_networks:
            click.echo(
                "warning: the inbound trunk admits SIP from any address with the credentials; "
                "set VA_GATEWAY_SIP_ALLOWED_ADDRESSES to Twilio's SIP signalling ranges",
                err=True,
            )

    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(cli())
