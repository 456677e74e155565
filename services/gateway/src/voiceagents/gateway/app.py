"""The gateway's ASGI app: Twilio webhooks, health, readiness and metrics.

`create_app(settings)` builds one gateway (tests and benchmarks run it in-process); `app` is the
module-level instance `python -m voiceagents.gateway serve` runs, configured from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
)
from multidict import MultiDict
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voiceagents.contracts import bus
from voiceagents.contracts.calls import (
    CALL_ENDED_SUBJECT,
    CALL_FAILED_SUBJECT,
    CALL_STARTED_SUBJECT,
    CALLS_STREAM,
    AnyCallEvent,
)
from voiceagents.contracts.codec import decode_union
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.gateway.agentloss import (
    LIVEKIT_WEBHOOK_PATH,
    AgentLossWatch,
    LiveKitWebhookVerifier,
)
from voiceagents.gateway.events import EventPublisher
from voiceagents.gateway.grants import GrantSigner
from voiceagents.gateway.metrics import GatewayMetrics
from voiceagents.gateway.rooms import CallRooms
from voiceagents.gateway.settings import Settings
from voiceagents.gateway.signature import SIGNATURE_HEADER, TwilioSignature
from voiceagents.gateway.webhook import (
    DIAL_ACTION_PATH,
    FALLBACK_PATH,
    INCOMING_PATH,
    STATUS_PATH,
    CallHandler,
    MissingParameter,
)

log = structlog.get_logger("voiceagents.gateway")

TWIML = "application/xml"
_SWEEP_SECONDS = 60.0


@dataclass
class Gateway:
    """Everything a running gateway holds; made in the startup hook, closed in shutdown."""

    settings: Settings
    metrics: GatewayMetrics
    signature: TwilioSignature
    nats: NatsClient
    mirror: ConfigMirror
    rooms: CallRooms
    events: EventPublisher
    handler: CallHandler
    livekit_webhook: LiveKitWebhookVerifier
    agent_loss: AgentLossWatch
    sweeper: asyncio.Task[None]
    following: list[Subscription]


def _problem(
    status: int, title: str, detail: str, field: str | None = None
) -> Response[str | bytes]:
    body = {"type": f"about:blank#{title}", "title": title, "status": status, "detail": detail}
    if field is not None:
        body["field"] = field
    return Response(
        msgspec.json.encode(body), status_code=status, media_type="application/problem+json"
    )


async def _signed_params(request: Request[object, object, State]) -> MultiDict[str] | None:
    gateway: Gateway = request.app.state.gateway
    body = await request.body()
    return gateway.signature.check(
        request.url.path,
        request.scope.get("query_string", b"").decode("latin-1"),
        body,
        request.headers.get(SIGNATURE_HEADER),
    )


Answer = Callable[[Gateway, MultiDict[str]], Awaitable[tuple[str, str]]]


async def _webhook(
    request: Request[object, object, State], endpoint: str, answer: Answer
) -> Response[str | bytes]:
    started = time.perf_counter()
    gateway: Gateway = request.app.state.gateway
    params = await _signed_params(request)
    checked = time.perf_counter()
    if endpoint == "incoming":
        gateway.metrics.stage_seconds.labels("signature").observe(checked - started)
    if params is None:
        # Unsigned, forged, or signed for another URL: no lookups, no rooms, no events.
        gateway.metrics.webhook_seconds.labels(endpoint, "forbidden").observe(checked - started)
        log.warning("webhook signature rejected", endpoint=endpoint, path=request.url.path)
        return _problem(HTTP_403_FORBIDDEN, "forbidden", "X-Twilio-Signature is not valid")
    try:
        body, outcome = await answer(gateway, params)
    except MissingParameter as exc:
        gateway.metrics.webhook_seconds.labels(endpoint, "bad_request").observe(
            time.perf_counter() - started
        )
        return _problem(HTTP_400_BAD_REQUEST, "missing-parameter", str(exc), exc.name)
    gateway.metrics.webhook_seconds.labels(endpoint, outcome).observe(time.perf_counter() - started)
    return Response(body, status_code=HTTP_200_OK, media_type=TWIML)


async def _incoming(gateway: Gateway, params: MultiDict[str]) -> tuple[str, str]:
    return await gateway.handler.incoming(params)


async def _status(gateway: Gateway, params: MultiDict[str]) -> tuple[str, str]:
    body = gateway.handler.status(params)
    return body or '<?xml version="1.0" encoding="UTF-8"?><Response />', "recorded"


async def _dial_action(gateway: Gateway, params: MultiDict[str]) -> tuple[str, str]:
    return gateway.handler.status(params, dial_action=True), "recorded"


async def _fallback(gateway: Gateway, params: MultiDict[str]) -> tuple[str, str]:
    log.error(
        "twilio used the fallback url",
        call_sid=params.get("CallSid", ""),
        error_code=params.get("ErrorCode", ""),
    )
    return gateway.handler.fallback(), "apology"


@post(INCOMING_PATH, status_code=HTTP_200_OK)
async def incoming(request: Request[object, object, State]) -> Response[str | bytes]:
    return await _webhook(request, "incoming", _incoming)


@post(STATUS_PATH, status_code=HTTP_200_OK)
async def status(request: Request[object, object, State]) -> Response[str | bytes]:
    return await _webhook(request, "status", _status)


@post(DIAL_ACTION_PATH, status_code=HTTP_200_OK)
async def dial_action(request: Request[object, object, State]) -> Response[str | bytes]:
    return await _webhook(request, "dial_action", _dial_action)


@post(FALLBACK_PATH, status_code=HTTP_200_OK)
async def fallback(request: Request[object, object, State]) -> Response[str | bytes]:
    return await _webhook(request, "fallback", _fallback)


@post(LIVEKIT_WEBHOOK_PATH, status_code=HTTP_200_OK)
async def livekit_webhook(request: Request[object, object, State]) -> Response[str | bytes]:
    started = time.perf_counter()
    gateway: Gateway = request.app.state.gateway
    event = gateway.livekit_webhook.verify(
        await request.body(), request.headers.get("authorization")
    )
    if event is None:
        # Unsigned, forged, or signed for another body: nothing is looked at or changed.
        gateway.metrics.webhook_seconds.labels("livekit", "unauthorized").observe(
            time.perf_counter() - started
        )
        log.warning("livekit webhook rejected", path=request.url.path)
        return _problem(
            HTTP_401_UNAUTHORIZED,
            "unauthorized",
            "Authorization is not a valid LiveKit webhook token for this body",
        )
    outcome = gateway.agent_loss.receive(event)
    gateway.metrics.webhook_seconds.labels("livekit", outcome).observe(
        time.perf_counter() - started
    )
    return Response(b"", status_code=HTTP_200_OK)


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request[object, object, State]) -> Response[dict[str, object]]:
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    checks = {
        "nats": gateway is not None and gateway.nats.is_connected,
        "mirror": gateway is not None and gateway.mirror.ready.is_set(),
    }
    ready = all(checks.values())
    return Response({"ready": ready, **checks}, status_code=200 if ready else 503)


@get("/metrics")
async def metrics(request: Request[object, object, State]) -> Response[bytes]:
    gateway: Gateway = request.app.state.gateway
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _sweep(handler: CallHandler, metrics: GatewayMetrics) -> None:
    while True:
        await asyncio.sleep(_SWEEP_SECONDS)
        handler.book.sweep()
        metrics.active_calls.set(handler.book.active_total)


async def _follow_calls(nc: NatsClient, handler: CallHandler) -> list[Subscription]:
    """Every replica hears every call's start and end (core NATS: the events published to the
    CALLS stream reach core subscribers too), whichever replica or worker published them."""

    async def receive(msg: Msg) -> None:
        try:
            event: AnyCallEvent = decode_union(msg.data, AnyCallEvent)
        except msgspec.DecodeError as exc:
            log.warning("unreadable call event ignored", subject=msg.subject, error=str(exc))
            return
        handler.follow(event)

    subjects = (CALL_STARTED_SUBJECT, CALL_ENDED_SUBJECT, CALL_FAILED_SUBJECT)
    return [await nc.subscribe(subject, cb=receive) for subject in subjects]


async def start_gateway(settings: Settings) -> Gateway:
    metrics = GatewayMetrics()
    nc = await bus.connect(settings.nats_url, "gateway", settings.nats_password, name="gateway")
    try:
        js = nc.jetstream()
        await bus.ensure_stream(js, CALLS_STREAM)
        # The gateway may start before the registry ever ran; an empty mirror is still a mirror.
        await bus.ensure_buckets(js)
        mirror = ConfigMirror()
        await mirror.start(js)
    except BaseException:
        await nc.close()
        raise
    rooms = CallRooms(
        url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret,
        agent_name=settings.worker_agent_name,
        empty_timeout_seconds=settings.room_empty_timeout_seconds,
        request_timeout_seconds=settings.livekit_budget_seconds,
    )
    events = EventPublisher(js, metrics)
    handler = CallHandler(
        settings=settings,
        mirror=mirror,
        rooms=rooms,
        signer=GrantSigner(
            settings.signing_key_bytes, settings.grant_key_id, settings.max_call_seconds
        ),
        events=events,
        metrics=metrics,
    )
    agent_loss = AgentLossWatch(
        rooms=rooms,
        book=handler.book,
        events=events,
        metrics=metrics,
        grace_seconds=settings.agent_lost_grace_seconds,
    )
    following = await _follow_calls(nc, handler)
    return Gateway(
        settings=settings,
        metrics=metrics,
        signature=TwilioSignature(settings.twilio_auth_token, settings.public_base_url),
        nats=nc,
        mirror=mirror,
        rooms=rooms,
        events=events,
        handler=handler,
        livekit_webhook=LiveKitWebhookVerifier(
            settings.livekit_api_key, settings.livekit_api_secret
        ),
        agent_loss=agent_loss,
        sweeper=asyncio.create_task(_sweep(handler, metrics)),
        following=following,
    )


async def stop_gateway(gateway: Gateway) -> None:
    gateway.sweeper.cancel()
    for subscription in gateway.following:
        with contextlib.suppress(Exception):  # the connection may already be closed
            await subscription.unsubscribe()
    await gateway.handler.drain(timeout=5.0)
    await gateway.agent_loss.drain(timeout=5.0)
    await gateway.events.drain(timeout=5.0)
    await gateway.mirror.stop()
    await gateway.rooms.aclose()
    with contextlib.suppress(Exception):
        await gateway.nats.drain()


def create_app(settings: Settings | None = None) -> Litestar:
    """The gateway app; `settings` defaults to the environment, read at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        gateway = await start_gateway(settings or Settings.from_env())
        app.state.gateway = gateway
        log.info("gateway started", public_base_url=gateway.settings.public_base_url)
        try:
            yield
        finally:
            await stop_gateway(gateway)

    return Litestar(
        route_handlers=[
            incoming,
            status,
            dial_action,
            fallback,
            livekit_webhook,
            healthz,
            readyz,
            metrics,
        ],
        lifespan=[lifespan],
        openapi_config=None,
    )


app = create_app()
