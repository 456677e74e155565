"""What the worker's main process does besides livekit-agents' own work: health endpoints, the
tool catalog, and the last word on calls whose job process died.

- One NATS connection, kept for the worker's life: the config mirror (`agent-config`,
  `phone-numbers`) that readiness checks, the `CALLS` stream ensured, the catalog reported to the
  registry (retried until it answers), and the `CallEnded` of a call whose job process died.
- `/healthz` (the main process answers), `/readyz` (NATS connected, config mirror filled, not
  draining: 503 naming what is missing) and `/metrics` (every process's Prometheus metrics), on
  `VA_WORKER_METRICS_PORT` — what the Kubernetes probes and the image's HEALTHCHECK ask.
- A job process that exits with a non-zero code (killed, out of memory, crashed) while it ran a
  call cannot say the call ended; livekit-agents tells the main process, which publishes
  `CallEnded(status="failed", ended_by="system", reason="failed")` for it. Its event id is the one
  the job would have used, so if the job had already published its own end, JetStream keeps that.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import structlog
from aiohttp import web
from livekit.agents import AgentServer
from livekit.agents.ipc.job_executor import JobExecutor, JobStatus
from nats.aio.client import Client
from nats.errors import Error as NatsError
from prometheus_client import CONTENT_TYPE_LATEST

from voiceagents.contracts import bus
from voiceagents.contracts.calls import CALLS_STREAM, DispatchMetadata
from voiceagents.contracts.codec import decode
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.tools import PlatformToolSpec
from voiceagents.worker.admission import Admission
from voiceagents.worker.catalog import sync_catalog
from voiceagents.worker.events import CallEvents
from voiceagents.worker.metrics import exposition
from voiceagents.worker.settings import Settings

log = structlog.get_logger("voiceagents.worker.supervisor")

RETRY_MAX_SECONDS = 30.0


class Supervisor:
    """The main process's NATS connection, health endpoints and job-process watch."""

    def __init__(
        self,
        settings: Settings,
        server: AgentServer,
        admission: Admission,
        tools: list[PlatformToolSpec],
    ) -> None:
        self._settings = settings
        self._server = server
        self._admission = admission
        self._tools = tools
        self.mirror = ConfigMirror()
        self.nc: Client | None = None
        self._http: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the health endpoints now; connect to NATS in the background."""
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        # All interfaces: the kubelet probes and Prometheus scrapes come from outside the pod.
        await web.TCPSite(self._http, "0.0.0.0", self._settings.metrics_port).start()
        # livekit-agents creates its process pool when the worker starts: watch it from now on.
        self._server._proc_pool.on("process_closed", self.on_process_closed)
        self._spawn(self._connect())

    async def _connect(self) -> None:
        delay = 0.5
        while self.nc is None:
            try:
                self.nc = await bus.connect(
                    self._settings.nats_url,
                    "worker",
                    self._settings.nats_password,
                    name="voice-worker",
                )
            except (NatsError, OSError, TimeoutError) as exc:
                log.warning("NATS unreachable; retrying", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        js = self.nc.jetstream()
        await self._until_done("config mirror", lambda: self.mirror.start(js))
        await self._until_done("CALLS stream", lambda: bus.ensure_stream(js, CALLS_STREAM))
        await sync_catalog(self.nc, f"{socket.gethostname()}:{os.getpid()}", self._tools)

    async def _until_done(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        delay = 0.5
        while True:
            try:
                await step()
                return
            except (NatsError, TimeoutError) as exc:
                log.warning(f"{what} not ready; retrying", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    # -- health ---------------------------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        checks = {
            "nats": self.nc is not None and self.nc.is_connected,
            "config_mirror": self.mirror.ready.is_set(),
            "not_draining": not self._server.draining,
        }
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def metrics(self, _: web.Request) -> web.Response:
        # Reading every process's files is blocking I/O: off the loop that accepts jobs.
        body = await asyncio.get_running_loop().run_in_executor(None, exposition, self._admission)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- job processes that died mid-call --------------------------------------------------

    def on_process_closed(self, process: JobExecutor) -> None:
        job = process.running_job
        if job is None:
            return
        try:
            failed = process.status == JobStatus.FAILED
        except RuntimeError:  # the process never started its job
            return
        if not failed:
            return
        try:
            metadata = decode(job.job.metadata, DispatchMetadata)
        except msgspec.ValidationError:
            return
        log.error(
            "job process died during a call",
            call_sid=metadata.call.call_sid,
            room=job.job.room.name,
        )
        self._spawn(self._publish_failed(metadata))

    async def _publish_failed(self, metadata: DispatchMetadata) -> None:
        events = CallEvents(self.nc.jetstream() if self.nc is not None else None, metadata.call)
        events.ended(ended_by="system", reason="failed", status="failed")
        await events.flush()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
