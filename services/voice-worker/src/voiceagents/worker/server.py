"""The voice worker: a livekit-agents `AgentServer` taking explicitly dispatched calls.

- Main process: registers with LiveKit under `VA_WORKER_AGENT_NAME`, admits at most MAX_CALLS
  calls (`admission`), reports the tool catalog to the registry, drains on SIGTERM.
- Job processes (one per call, kept warm): `prewarm` fills the runtime config mirror from NATS
  KV and discovers the tools once per process, before any call; `call.entrypoint` runs a call.
"""

from __future__ import annotations

import asyncio
import os
import socket
from functools import partial

import structlog
from livekit.agents import AgentServer, JobProcess
from nats.errors import Error as NatsError

from voiceagents.contracts import bus
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.worker.admission import LOAD_THRESHOLD, Admission
from voiceagents.worker.call import WorkerRuntime, entrypoint
from voiceagents.worker.catalog import sync_catalog
from voiceagents.worker.settings import Settings
from voiceagents.worker.tools.discovery import catalog, discover

log = structlog.get_logger("voiceagents.worker")

PREWARM_NATS_SECONDS = 5.0


def prewarm(proc: JobProcess, *, settings: Settings) -> None:
    """Runs once in every job process before it gets a call (no event loop is running yet)."""
    mirror = ConfigMirror()
    try:
        asyncio.run(asyncio.wait_for(fill_mirror(settings, mirror), PREWARM_NATS_SECONDS))
    except (NatsError, OSError, TimeoutError) as exc:
        # Calls still work: the entrypoint reads the agent's config from KV when memory lacks it.
        log.warning("config mirror not filled at prewarm", error=type(exc).__name__)
    proc.userdata["runtime"] = WorkerRuntime.create(settings, mirror)


async def fill_mirror(settings: Settings, mirror: ConfigMirror) -> None:
    nc = await bus.connect(
        settings.nats_url,
        "worker",
        settings.nats_password,
        name="voice-worker-prewarm",
        max_reconnect_attempts=0,
        allow_reconnect=False,
    )
    try:
        await mirror.start(nc.jetstream())
        await mirror.stop()
    finally:
        await nc.close()


async def publish_catalog(settings: Settings) -> None:
    """Connect as `worker` and report the code tools until the registry has them."""
    tools = catalog(discover(settings.packages))
    nc = await bus.connect(settings.nats_url, "worker", settings.nats_password, name="voice-worker")
    try:
        await sync_catalog(nc, f"{socket.gethostname()}:{os.getpid()}", tools)
    finally:
        await nc.close()


def build_server(settings: Settings) -> AgentServer:
    admission = Admission(settings.max_calls)
    server = AgentServer(
        setup_fnc=partial(prewarm, settings=settings),
        load_fnc=admission.load,
        load_threshold=LOAD_THRESHOLD,
        drain_timeout=settings.drain_timeout_seconds,
        num_idle_processes=settings.idle_processes,
        ws_url=settings.livekit_url or None,
        api_key=settings.livekit_api_key or None,
        api_secret=settings.livekit_api_secret or None,
        port=settings.http_port,
        prometheus_port=settings.metrics_port or None,
        log_level=settings.log_level.upper(),
    )
    admission.bind(server)
    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_request=admission.on_request)
    background: set[asyncio.Task[None]] = set()

    def on_started() -> None:
        task = asyncio.create_task(publish_catalog(settings))
        background.add(task)
        task.add_done_callback(background.discard)

    server.on("worker_started", on_started)
    return server
