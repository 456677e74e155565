"""tool-vault's process: NATS request handlers (release, OAuth start, secrets put), the call-end
follower, and an ASGI app with the OAuth callback, health, readiness and metrics.

`create_app(settings)` builds one tool-vault (tests and benchmarks run it in-process); `app` is
the module-level instance `python -m voiceagents.toolvault serve` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgspec
import structlog
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.response import Redirect
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voiceagents.contracts import bus
from voiceagents.contracts.calls import CALLS_STREAM, TOOLVAULT_AUDIENCE
from voiceagents.contracts.grants import GrantVerifier
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.toolvault import (
    OAUTH_START_SUBJECT,
    RELEASE_SUBJECT,
    SECRETS_PUT_SUBJECT,
    TOOLVAULT_STREAM,
    CredentialConnected,
    CredentialRefreshed,
    CredentialRefreshFailed,
)
from voiceagents.toolvault.call_ends import CallEndFollower
from voiceagents.toolvault.connect import ConnectService
from voiceagents.toolvault.embedded import EmbeddedStore, EnvelopeCipher
from voiceagents.toolvault.events import AuditPublisher, new_event_id, now
from voiceagents.toolvault.metrics import ToolVaultMetrics
from voiceagents.toolvault.oauth import OAuthFailure, OAuthFlows
from voiceagents.toolvault.release import ReleaseService
from voiceagents.toolvault.revocations import Revocations
from voiceagents.toolvault.settings import Settings
from voiceagents.toolvault.store import ReleaseReadCache, SecretStore, ToolSecret
from voiceagents.toolvault.vault import VaultStore

log = structlog.get_logger("voiceagents.toolvault")

QUEUE_GROUP = "toolvault"
CALLBACK_PATH = "/api/v1/tools/callback"
# Requests handled at once; more wait in the subscription's buffer.
_MAX_IN_FLIGHT = 256


def make_store(settings: Settings) -> SecretStore:
    if settings.backend == "vault":
        return VaultStore(settings.vault_config())
    cipher = EnvelopeCipher(settings.master_key_bytes(), settings.master_key_id)
    return EmbeddedStore(settings.database_url, cipher)


@dataclass
class ToolVault:
    """Everything a running tool-vault holds; made in the startup hook, closed in shutdown."""

    settings: Settings
    metrics: ToolVaultMetrics
    store: ReleaseReadCache
    nats: NatsClient
    mirror: ConfigMirror
    audit: AuditPublisher
    oauth: OAuthFlows
    release: ReleaseService
    connect: ConnectService
    revocations: Revocations
    call_ends: CallEndFollower
    subscriptions: list[Subscription] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_MAX_IN_FLIGHT))


def _responder(
    vault: ToolVault, handle: Callable[[bytes], Awaitable[bytes]]
) -> Callable[[Msg], Awaitable[None]]:
    async def respond(msg: Msg) -> None:
        async with vault.slots:
            try:
                answer = await handle(msg.data)
            except Exception:
                # Never let a bug leave the requester waiting for its timeout; say nothing more.
                log.exception("request handler failed", subject=msg.subject)
                return
            if msg.reply:
                await msg.respond(answer)

    async def on_message(msg: Msg) -> None:
        # The subscription callback runs one message at a time: hand each to its own task, so a
        # slow refresh never holds up other calls' releases.
        task = asyncio.create_task(respond(msg))
        vault.tasks.add(task)
        task.add_done_callback(vault.tasks.discard)

    return on_message


async def start_toolvault(settings: Settings) -> ToolVault:
    metrics = ToolVaultMetrics()
    store = ReleaseReadCache(make_store(settings), settings.release_cache_seconds)
    await store.start()
    nc: NatsClient | None = None
    vault: ToolVault | None = None
    try:
        nc = await bus.connect(
            settings.nats_url,
            "toolvault",
            settings.nats_password,
            name="toolvault",
            drain_timeout=5,
        )
        js = nc.jetstream()
        for stream in (TOOLVAULT_STREAM, CALLS_STREAM):
            await bus.ensure_stream(js, stream)
        await bus.ensure_buckets(js)
        mirror = ConfigMirror()
        await mirror.start(js)
        audit = AuditPublisher(js, metrics)
        oauth = OAuthFlows(
            store,
            settings.providers(),
            settings.redirect_uri,
            return_origins=settings.return_origins(),
        )
        revocations = Revocations(settings.max_call_seconds + 300)
        vault = ToolVault(
            settings=settings,
            metrics=metrics,
            store=store,
            nats=nc,
            mirror=mirror,
            audit=audit,
            oauth=oauth,
            release=ReleaseService(
                grants=GrantVerifier(settings.public_keys(), audience=TOOLVAULT_AUDIENCE),
                revocations=revocations,
                mirror=mirror,
                store=store,
                oauth=oauth,
                audit=audit,
                metrics=metrics,
            ),
            connect=ConnectService(store, oauth, audit),
            revocations=revocations,
            call_ends=CallEndFollower(
                js,
                revocations,
                metrics,
                instance_id=settings.instance_id,
                lookback_seconds=settings.max_call_seconds + 300,
            ),
        )
        _audit_refreshes(vault)
        # Returns once the ends of the last grant lifetime are applied: no release is answered
        # before then (revocations are in memory, so a restart starts from nothing).
        await vault.call_ends.start()
        for subject, handle in (
            (RELEASE_SUBJECT, vault.release.handle),
            (OAUTH_START_SUBJECT, vault.connect.oauth_start),
            (SECRETS_PUT_SUBJECT, vault.connect.secrets_put),
        ):
            vault.subscriptions.append(
                await nc.subscribe(subject, queue=QUEUE_GROUP, cb=_responder(vault, handle))
            )
        await nc.flush()
    except BaseException:
        if vault is not None:
            await vault.call_ends.stop()
        if nc is not None:
            await nc.close()
        await store.close()
        raise
    return vault


def _audit_refreshes(vault: ToolVault) -> None:
    def refreshed(secret: ToolSecret) -> None:
        vault.metrics.refreshes.labels("ok").inc()
        log.info("oauth token refreshed", agent_tool_id=secret.agent_tool_id)
        vault.audit.publish(
            CredentialRefreshed(
                event_id=new_event_id(),
                org_id=secret.org_id,
                agent_tool_id=secret.agent_tool_id,
                at=now(),
                agent_id=secret.agent_id,
                provider=secret.provider or "",
            )
        )

    def failed(secret: ToolSecret, reason: str) -> None:
        vault.metrics.refreshes.labels("failed").inc()
        log.warning("oauth refresh failed", agent_tool_id=secret.agent_tool_id, reason=reason)
        vault.audit.publish(
            CredentialRefreshFailed(
                event_id=new_event_id(),
                org_id=secret.org_id,
                agent_tool_id=secret.agent_tool_id,
                at=now(),
                agent_id=secret.agent_id,
                provider=secret.provider or "",
                reason=reason,
            )
        )

    vault.oauth.on_refreshed = refreshed
    vault.oauth.on_refresh_failed = failed


async def stop_toolvault(vault: ToolVault) -> None:
    for subscription in vault.subscriptions:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
    if vault.tasks:
        await asyncio.wait(set(vault.tasks), timeout=5.0)
    await vault.call_ends.stop()
    await vault.oauth.close()
    await vault.audit.drain(timeout=5.0)
    await vault.mirror.stop()
    with contextlib.suppress(Exception):
        await vault.nats.drain()
    await vault.store.close()


# -- HTTP ------------------------------------------------------------------------------------


def _problem(status: int, title: str, detail: str, field: str | None = None) -> Response[bytes]:
    body = {"type": f"about:blank#{title}", "title": title, "status": status, "detail": detail}
    if field is not None:
        body["field"] = field
    return Response(
        msgspec.json.encode(body), status_code=status, media_type="application/problem+json"
    )


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@get(CALLBACK_PATH)
async def oauth_callback(
    request: Request[object, object, State],
) -> Response[bytes] | Redirect:
    """The OAuth provider sends the admin's browser here with `code` and `state` (or `error`)."""
    vault: ToolVault = request.app.state.toolvault
    params = request.query_params
    state = params.get("state") or ""
    try:
        pending = await vault.oauth.claim(state)
    except OAuthFailure as exc:
        vault.metrics.callbacks.labels(exc.reason).inc()
        log.warning("oauth callback refused", reason=exc.reason)
        return _problem(400, exc.reason, exc.detail, "state")
    return_url = pending.return_url
    if return_url and not vault.oauth.return_url_allowed(return_url):
        # Checked at start too; re-checked in case the allowed origins changed since.
        log.warning("oauth return_url refused", agent_tool_id=pending.agent_tool_id)
        return_url = None
    try:
        if params.get("error"):
            raise OAuthFailure("authorization_denied", "the authorization was not granted")
        code = params.get("code") or ""
        if not code:
            raise OAuthFailure("missing_code", "code is missing")
        connected = await vault.oauth.finish(pending, code)
    except OAuthFailure as exc:
        vault.metrics.callbacks.labels(exc.reason).inc()
        log.warning("oauth callback failed", reason=exc.reason, agent_tool_id=pending.agent_tool_id)
        await vault.oauth.forget(state)
        if return_url:
            return Redirect(
                _with_query(return_url, agent_tool_id=pending.agent_tool_id, error=exc.reason)
            )
        return _problem(400, exc.reason, exc.detail)
    await vault.oauth.forget(state)
    vault.metrics.callbacks.labels("ok").inc()
    vault.audit.publish(
        CredentialConnected(
            event_id=new_event_id(),
            org_id=pending.org_id,
            agent_tool_id=pending.agent_tool_id,
            at=now(),
            agent_id=pending.agent_id,
            provider=pending.provider,
            scopes=pending.scopes,
        )
    )
    log.info(
        "oauth connected",
        org_id=pending.org_id,
        agent_tool_id=pending.agent_tool_id,
        provider=pending.provider,
        version=connected.version,
    )
    if return_url:
        return Redirect(
            _with_query(return_url, agent_tool_id=pending.agent_tool_id, connected="true")
        )
    body = {"connected": True, "agent_tool_id": pending.agent_tool_id, "tool": pending.tool_name}
    return Response(msgspec.json.encode(body), media_type="application/json")


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request[object, object, State]) -> Response[dict[str, object]]:
    vault: ToolVault | None = getattr(request.app.state, "toolvault", None)
    checks = {
        "nats": vault is not None and vault.nats.is_connected,
        "mirror": vault is not None and vault.mirror.ready.is_set(),
        "store": vault is not None and await vault.store.ready(),
        "call_ends": vault is not None and vault.revocations.current.is_set(),
    }
    ready = all(checks.values())
    return Response({"ready": ready, **checks}, status_code=200 if ready else 503)


@get("/metrics")
async def metrics(request: Request[object, object, State]) -> Response[bytes]:
    vault: ToolVault = request.app.state.toolvault
    return Response(generate_latest(vault.metrics.registry), media_type=CONTENT_TYPE_LATEST)


ROUTES = [oauth_callback, healthz, readyz, metrics]


def create_app(settings: Settings | None = None) -> Litestar:
    """The tool-vault app; `settings` default to the environment, read at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        vault = await start_toolvault(settings or Settings.from_env())
        app.state.toolvault = vault
        log.info("tool-vault started", backend=vault.store.name)
        try:
            yield
        finally:
            await stop_toolvault(vault)

    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        openapi_config=None,
    )


app = create_app()
