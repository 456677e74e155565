"""The registry's ASGI app: admin REST API, health, metrics, and the NATS work in the same
process (outbox relay, catalog sync, call log and auth-status consumers).

`create_app(settings)` builds one registry (tests and benchmarks run it in-process); `app` is
the module-level instance `python -m voiceagents.registry serve` runs, configured from the
environment at startup. The API serves, and writes commit, while NATS is unreachable; the relay
publishes what they committed once NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from litestar import Litestar, Request, Response, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from nats.aio.client import Client as NatsClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voiceagents.contracts import bus
from voiceagents.contracts.calls import CALLS_STREAM, CALLS_SUBJECTS, REGISTRY_AUDIENCE
from voiceagents.contracts.grants import GrantVerifier
from voiceagents.contracts.knowledge import KB_SEARCH_SUBJECT
from voiceagents.contracts.registry import REGISTRY_STREAM
from voiceagents.contracts.tools import CATALOG_SYNC_SUBJECT
from voiceagents.contracts.toolvault import TOOLVAULT_EVENTS_SUBJECTS, TOOLVAULT_STREAM
from voiceagents.registry import (
    agents,
    calls,
    db,
    knowledge,
    oauth,
    organizations,
    tool_secrets,
    tools,
)
from voiceagents.registry.auth import KeyVerifier, authenticate
from voiceagents.registry.calllog import CALL_LOG_DURABLE, CallLogConsumer
from voiceagents.registry.catalog import CatalogSyncHandler
from voiceagents.registry.consumers import consume
from voiceagents.registry.kb_search import KnowledgeSearchHandler
from voiceagents.registry.logs import REQUEST_ID
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.oauth import AUTH_STATUS_DURABLE, AuthStatusConsumer
from voiceagents.registry.problems import EXCEPTION_HANDLERS, refuse_nul_characters
from voiceagents.registry.projection import KvProjector
from voiceagents.registry.readcache import AgentCache
from voiceagents.registry.relay import OutboxRelay
from voiceagents.registry.runtime import Registry, registry_of
from voiceagents.registry.settings import Settings

log = structlog.get_logger("voiceagents.registry")

MAX_BODY_BYTES = 1024 * 1024
_NATS_RETRY_SECONDS = 1.0
_STOP_SECONDS = 3.0


class RequestContext:
    """Request id (from `X-Request-ID` or new), one JSON access-log line, and HTTP metrics.

    Kept cheap on purpose: it runs on every request, and at full load its first version
    (uuid4, structlog's bind/unbind_contextvars) cost a quarter of a GET's CPU."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        request_id = request_id or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            method = str(scope.get("method", ""))
            registry: Registry | None = getattr(scope["app"].state, "registry", None)
            if registry is not None:
                registry.metrics.observe_request(method, route, status, elapsed)
            log.info(
                "request",
                method=method,
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                key_id=scope["state"].get("key_id"),
            )
            REQUEST_ID.reset(token)


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, bool]]:
    """Ready when PostgreSQL answers and NATS is connected."""
    registry = registry_of(request)
    postgres = False
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            postgres = await registry.pool.fetchval("SELECT true") is True
    nats = registry.nats is not None and registry.nats.is_connected
    ready = postgres and nats
    return Response(
        {"ready": ready, "postgres": postgres, "nats": nats}, status_code=200 if ready else 503
    )


@get("/metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    registry = registry_of(request)
    return Response(generate_latest(registry.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _nats_work(registry: Registry) -> None:
    """Connect to NATS (retrying until it answers), then run everything that uses it."""
    settings = registry.settings
    while True:
        connection: NatsClient | None = None
        try:
            connection = await bus.connect(
                settings.nats_url, "registry", settings.nats_password, name="registry"
            )
            js = connection.jetstream()
            await bus.ensure_stream(js, REGISTRY_STREAM)
            await bus.ensure_stream(js, bus.DEADLETTER_STREAM)
            await bus.ensure_buckets(js)
            projector = await KvProjector.open(js, registry.metrics)
            nc = connection
            break
        except asyncio.CancelledError:
            raise
        except bus.StreamTamperedError as exc:
            # Not an outage: someone else made the stream. Retry until an operator fixes it.
            log.error("JetStream stream refused; retrying", error=str(exc))
        except Exception as exc:
            log.warning("NATS not reachable yet; retrying", error=str(exc))
        if connection is not None:  # a fresh connection per attempt: do not leave this one open
            with contextlib.suppress(Exception):
                await connection.close()
        await asyncio.sleep(_NATS_RETRY_SECONDS)
    registry.nats = nc
    registry.relay = OutboxRelay(settings.dsn, registry.pool, js, projector, registry.metrics)
    await nc.subscribe(
        CATALOG_SYNC_SUBJECT,
        queue="registry",
        cb=CatalogSyncHandler(registry.pool, registry.metrics).handle,
    )
    await nc.subscribe(
        KB_SEARCH_SUBJECT,
        queue="registry",
        cb=KnowledgeSearchHandler(
            registry.pool, GrantVerifier(settings.public_keys(), audience=REGISTRY_AUDIENCE)
        ).handle,
    )
    log.info("connected to NATS", url=settings.nats_url)
    await asyncio.gather(
        registry.relay.run(),
        consume(
            js,
            stream=CALLS_STREAM,
            durable=CALL_LOG_DURABLE,
            subject=CALLS_SUBJECTS,
            handle=CallLogConsumer(registry.pool, registry.metrics).handle,
        ),
        consume(
            js,
            stream=TOOLVAULT_STREAM,
            durable=AUTH_STATUS_DURABLE,
            subject=TOOLVAULT_EVENTS_SUBJECTS,
            handle=AuthStatusConsumer(registry.pool, registry.metrics).handle,
        ),
    )


async def start_registry(settings: Settings) -> Registry:
    metrics_ = RegistryMetrics()
    pool = await db.connect(
        settings.dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size
    )
    registry = Registry(
        settings=settings,
        pool=pool,
        keys=KeyVerifier(pool, settings.auth_cache_seconds),
        agents=AgentCache(),
        metrics=metrics_,
    )
    for work in (_nats_work(registry), registry.agents.run(settings.dsn)):
        task = asyncio.create_task(work)
        task.add_done_callback(_report_failure)
        registry.tasks.append(task)
    return registry


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background work stopped", exc_info=task.exception())


async def stop_registry(registry: Registry) -> None:
    if registry.relay is not None:
        registry.relay.close()
    for task in registry.tasks:
        task.cancel()
    await asyncio.wait(registry.tasks, timeout=_STOP_SECONDS)
    if registry.nats is not None:
        try:
            await asyncio.wait_for(registry.nats.drain(), _STOP_SECONDS)
        except Exception:  # a subscription that will not drain must not hold up shutdown
            await registry.nats.close()
    try:
        await asyncio.wait_for(registry.pool.close(), _STOP_SECONDS)
    except TimeoutError:
        registry.pool.terminate()


def create_app(settings: Settings | None = None) -> Litestar:
    """The registry app; `settings` defaults to the environment, read at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        registry = await start_registry(settings or Settings.from_env())
        app.state.registry = registry
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's way so collections stay short under load.
        gc.freeze()
        log.info("registry started")
        try:
            yield
        finally:
            await stop_registry(registry)
            log.info("registry stopped")

    return Litestar(
        route_handlers=[
            organizations.create_organization,
            organizations.list_organizations,
            organizations.get_organization,
            organizations.create_api_key,
            organizations.list_api_keys,
            organizations.revoke_api_key,
            agents.create_agent,
            agents.list_agents,
            agents.get_agent,
            agents.update_agent,
            agents.delete_agent,
            tools.list_platform_tools,
            tools.create_platform_tool,
            tools.replace_platform_tool,
            tools.delete_platform_tool,
            tools.create_agent_tool,
            tools.list_agent_tools,
            tools.update_agent_tool,
            tools.delete_agent_tool,
            oauth.start_oauth,
            tool_secrets.put_tool_secrets,
            calls.list_calls,
            calls.get_call,
            knowledge.create_article,
            knowledge.list_articles,
            knowledge.get_article,
            knowledge.update_article,
            knowledge.delete_article,
            healthz,
            readyz,
            metrics,
        ],
        dependencies={"admin": Provide(authenticate)},
        before_request=refuse_nul_characters,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[RequestContext],
        lifespan=[lifespan],
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="Voice Agents registry",
            version="1.0.0",
            description="Admin API: organizations, agents, tools, call log.",
            path="/schema",
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="http", scheme="bearer", description="API key (va_...)"
                    )
                }
            ),
            security=[{"apiKey": []}],
        ),
    )


app = create_app()
