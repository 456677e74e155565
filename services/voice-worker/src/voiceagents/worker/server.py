"""The voice worker: a livekit-agents `AgentServer` taking explicitly dispatched calls.

- Main process: registers with LiveKit under `VA_WORKER_AGENT_NAME`, admits at most MAX_CALLS
  calls (`admission`), drains on SIGTERM; the `supervisor` serves /healthz, /readyz and /metrics,
  reports the tool catalog to the registry and ends the calls of job processes that died.
- Job processes (one per call, kept warm): `prewarm` fills the runtime config mirror from NATS
  KV and discovers the tools once per process, before any call; `call.entrypoint` runs a call.
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from livekit.agents import AgentServer, JobProcess
from nats.errors import Error as NatsError

from voiceagents.contracts import bus
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.worker.admission import Admission
from voiceagents.worker.call import WorkerRuntime, entrypoint
from voiceagents.worker.logs import configure_logging
from voiceagents.worker.settings import Settings
from voiceagents.worker.supervisor import Supervisor
from voiceagents.worker.tools.discovery import catalog, discover

log = structlog.get_logger("voiceagents.worker")

PREWARM_NATS_SECONDS = 5.0


def prewarm(proc: JobProcess, *, settings: Settings) -> None:
    """Runs once in every job process before it gets a call (no event loop is running yet)."""
    configure_logging()
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
        allow_reconnect=False,
    )
    try:
        await mirror.start(nc.jetstream())
        await mirror.stop()
    finally:
        await nc.close()


def build_server(settings: Settings) -> AgentServer:
    # Imported now, before the event loop runs: importing the tools takes seconds of CPU that
    # would otherwise block the loop that accepts jobs.
    tool_classes = discover(settings.packages)
    tool_modules = {cls.__module__ for cls in tool_classes.values()}
    admission = Admission(settings.max_calls, settings.livekit_target_load)
    server = AgentServer(
        setup_fnc=partial(prewarm, settings=settings),
        load_fnc=admission.load,
        load_threshold=admission.target_load,
        drain_timeout=settings.drain_timeout_seconds,
        num_idle_processes=settings.idle_processes,
        ws_url=settings.livekit_url or None,
        api_key=settings.livekit_api_key or None,
        api_secret=settings.livekit_api_secret or None,
        port=settings.http_port,
        # /metrics is served by the supervisor, with /healthz and /readyz on the same port.
        prometheus_port=None,
        log_level=settings.log_level.upper(),
        # Imported once in the forkserver, shared copy-on-write by every call's job process: the
        # tools' own modules too (a package import alone does not import its modules).
        preload_modules=["voiceagents.worker.call", *sorted(tool_modules)],
    )
    admission.bind(server)
    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_request=admission.on_request)
    supervisor = Supervisor(settings, server, admission, catalog(tool_classes))
    background: set[asyncio.Task[None]] = set()

    def on_started() -> None:
        task = asyncio.create_task(supervisor.start())
        background.add(task)
        task.add_done_callback(background.discard)

    def on_registered(*_: object) -> None:
        # LiveKit counts a new worker as available only after its first status update, which
        # livekit-agents sends on a 2.5 s timer: send it now, so a new worker takes calls at once.
        task = asyncio.create_task(server._update_worker_status())
        background.add(task)
        task.add_done_callback(background.discard)

    server.on("worker_started", on_started)
    server.on("worker_registered", on_registered)
    return server
