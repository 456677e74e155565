"""Fixtures of the voice worker's tests: small test tools, an agent config, a call, and a
text-mode call running on the offline (stand-in) model."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from livekit import api
from livekit.agents import AgentSession
from nacl.public import PublicKey, SealedBox
from nats.aio.client import Client

from voiceagents.contracts import bus
from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET, AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import (
    CALLS_SUBJECTS,
    AnyCallEvent,
    CallContext,
    CallEvent,
    DispatchMetadata,
)
from voiceagents.contracts.codec import decode, decode_union, encode
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.tools import ToolFunctionSpec
from voiceagents.contracts.toolvault import (
    RELEASE_SUBJECT,
    CredentialReleaseReply,
    CredentialReleaseRequest,
    ReleasedCredentials,
    ReleaseError,
    ToolCredentials,
)
from voiceagents.devstack.phone import SimulatedCaller
from voiceagents.devstack.servers import LiveKitServer, NatsServer, free_port
from voiceagents.worker.call import CallState, WorkerRuntime, new_agent, new_session, prepare_call
from voiceagents.worker.events import CallEvents
from voiceagents.worker.offline_model import (
    OfflineRealtimeModel,
    OfflineScript,
    OfflineVoice,
    ScriptBook,
)
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import PhraseAudio
from voiceagents.worker.tools.base import BaseTool
from voiceagents.worker.tools.http import HttpToolExecutor

# Test tools live in a package the worker process can import too.
TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))
os.environ.setdefault("VA_TEST_PLANTED_SECRET", "sk_live_PLANTED_" + uuid.uuid4().hex)

from voice_worker_test_tools import PLANTED_SECRET, Flaky, Orders  # noqa: E402

TOOL_CLASSES: dict[str, type[BaseTool]] = {"orders": Orders, "flaky": Flaky}


def spec(name: str, **fields: Any) -> ToolFunctionSpec:
    return ToolFunctionSpec(name=name, description="", **fields)


def agent_config(orders_auth: str = "api_key", **fields: Any) -> AgentRuntimeConfig:
    values: dict[str, Any] = {
        "agent_id": f"agent-{uuid.uuid4().hex[:8]}",
        "org_id": "org-1",
        "version": 1,
        "name": "Ada",
        "system_prompt": "You are Ada, the shop's phone assistant.",
        "greeting": "Hi, this is {agent_name} from the shop. How can I help?",
        "tools": [
            ToolBinding(
                agent_tool_id="at-orders",
                tool_name="orders",
                auth_type=orders_auth,
                # cancel_order is unselected: the registry leaves it out.
                functions=[spec("lookup_order"), spec("refund_order")],
            ),
            ToolBinding(
                agent_tool_id="at-flaky",
                tool_name="flaky",
                timeout_seconds=0.2,
                functions=[spec("slow_read"), spec("broken_write"), spec("slow_but_fine")],
            ),
        ],
    }
    values.update(fields)
    return AgentRuntimeConfig(**values)


def call_for(config: AgentRuntimeConfig, call_sid: str | None = None) -> CallContext:
    sid = call_sid or f"CA{uuid.uuid4().hex}"
    return CallContext(
        call_sid=sid,
        room=f"call_{sid}",
        org_id=config.org_id,
        agent_id=config.agent_id,
        agent_version=config.version,
        from_number="+14155550123",
        to_number="+14155550100",
        started_at=datetime.now(UTC),
    )


def runtime_for(
    config: AgentRuntimeConfig, http: HttpToolExecutor | None = None, **settings: Any
) -> WorkerRuntime:
    mirror = ConfigMirror()
    mirror.apply_agent(config)
    return WorkerRuntime(
        settings=Settings(dev_mode=True, model="offline", **settings),
        mirror=mirror,
        tool_classes=TOOL_CLASSES,
        phrases=PhraseAudio(OfflineVoice(), None),
        scripts=ScriptBook(),
        http=http,
    )


@dataclass
class TextCall:
    """A call in text mode: the real session, tools and events, on the offline model."""

    state: CallState
    session: AgentSession[CallState]
    model: OfflineRealtimeModel
    published: list[CallEvent]

    @property
    def received_tools(self) -> dict[str, Any]:
        return self.model.sessions[0].tools.function_tools


TextCallFactory = Callable[..., Any]


@pytest.fixture
async def text_call() -> AsyncIterator[TextCallFactory]:
    sessions: list[AgentSession[CallState]] = []

    async def start(
        script: OfflineScript,
        config: AgentRuntimeConfig | None = None,
        *,
        nc: Client | None = None,
        http: HttpToolExecutor | None = None,
        **settings: Any,
    ) -> TextCall:
        config = config or agent_config()
        runtime = runtime_for(config, http, **settings)
        published: list[CallEvent] = []
        call = call_for(config)
        state = await prepare_call(
            runtime,
            DispatchMetadata(call=call, grant="test-grant"),
            nc=nc,
            js=None,
            started=0.0,
            events=CallEvents(None, call, on_published=published.append),
        )
        model = OfflineRealtimeModel(script=script, realtime=False)
        session = new_session(model, state)
        sessions.append(session)
        await session.start(new_agent(state))
        return TextCall(state=state, session=session, model=model, published=published)

    yield start
    for session in sessions:
        await session.aclose()


class ToolVaultStandIn:
    """Answers `toolvault.v1.release` as the `toolvault` user, sealing exactly as tool-vault
    does; `error` / `tool_errors` make it refuse the whole request or single tools."""

    def __init__(self) -> None:
        self.error: ReleaseError | None = None
        self.tool_errors: list[ReleaseError] = []
        self.requests: list[CredentialReleaseRequest] = []

    async def handle(self, msg: Any) -> None:
        request = decode(msg.data, CredentialReleaseRequest)
        self.requests.append(request)
        if self.error is not None:
            await msg.respond(encode(CredentialReleaseReply(error=self.error)))
            return
        refused = {e.agent_tool_id for e in self.tool_errors}
        released = ReleasedCredentials(
            credentials=[
                ToolCredentials(
                    agent_tool_id=tool_id, kind="api_key", secrets={"api_key": PLANTED_SECRET}
                )
                for tool_id in request.agent_tool_ids
                if tool_id not in refused
            ]
        )
        box = SealedBox(PublicKey(base64.b64decode(request.worker_public_key)))
        sealed = base64.b64encode(box.encrypt(encode(released))).decode()
        await msg.respond(
            encode(CredentialReleaseReply(sealed_credentials=sealed, tool_errors=self.tool_errors))
        )


@pytest.fixture
async def toolvault(nats_server: NatsServer) -> AsyncIterator[ToolVaultStandIn]:
    import nats

    nc = await nats.connect(**nats_server.credentials("toolvault"))
    stand_in = ToolVaultStandIn()
    subscription = await nc.subscribe(RELEASE_SUBJECT, cb=stand_in.handle)
    yield stand_in
    await subscription.unsubscribe()
    await nc.close()


@pytest.fixture
async def worker_nats(nats_server: NatsServer) -> AsyncIterator[Client]:
    import nats

    nc = await nats.connect(**nats_server.credentials("worker"))
    yield nc
    await nc.close()


@pytest.fixture
def make_config() -> Callable[..., AgentRuntimeConfig]:
    """An agent using the test tools; keyword arguments override its fields."""
    return agent_config


@pytest.fixture
def planted_secret() -> str:
    """The API key the tool-vault stand-in releases; it must never show up in logs or events."""
    return PLANTED_SECRET


@pytest.fixture
def tool_calls() -> dict[str, int]:
    """How often each Flaky function ran in this test."""
    Flaky.calls.clear()
    return Flaky.calls


class WorkerProcess:
    """`python -m voiceagents.worker start` as a real process, its log in a file."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        log_path: Path,
        agent_name: str,
        metrics_port: int,
    ) -> None:
        self.process = process
        self.log_path = log_path
        self.agent_name = agent_name
        # /healthz, /readyz and /metrics.
        self.metrics_port = metrics_port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        def logged() -> bool:
            if self.process.returncode is not None and text not in self.log():
                raise AssertionError(f"worker exited ({self.process.returncode}):\n{self.log()}")
            return text in self.log()

        await wait_until(logged, timeout, f"worker log line {text!r}")

    async def stop(self) -> None:
        # The whole process group: SIGKILL to the main process alone leaves its forkserver and
        # warm job processes running (they hold each other's pipes open) after the test run.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition that has no event to await (a log line, a remote state)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - a log file has no event to await
            await asyncio.sleep(0.05)


@pytest.fixture
async def start_worker(
    nats_server: NatsServer, livekit_server: LiveKitServer, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    started: list[WorkerProcess] = []

    async def start(script: OfflineScript, **settings: str) -> WorkerProcess:
        agent_name = f"voice-agent-{uuid.uuid4().hex[:8]}"
        metrics_port = free_port()
        script_path = tmp_path / f"{agent_name}.json"
        script_path.write_bytes(msgspec.json.encode(ScriptBook(default=script)))
        env = {
            **os.environ,
            **nats_server.environment(),
            **livekit_server.environment(),
            "VA_WORKER_AGENT_NAME": agent_name,
            "VA_WORKER_MODEL": "offline",
            "VA_WORKER_OFFLINE_SCRIPT": str(script_path),
            "VA_WORKER_OFFLINE_FIRST_AUDIO_MS": "100",
            "VA_WORKER_HTTP_PORT": str(free_port()),
            "VA_WORKER_METRICS_PORT": str(metrics_port),
            "VA_WORKER_PHRASE_CACHE_DIR": str(tmp_path / "phrases"),
            "VA_WORKER_IDLE_PROCESSES": "1",
            "VA_WORKER_DEV_MODE": "true",
            "VA_WORKER_TOOL_PACKAGES": "voice_worker_test_tools",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
            ),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{agent_name}"),
            **{f"VA_WORKER_{key.upper()}": value for key, value in settings.items()},
        }
        log_path = tmp_path / f"{agent_name}.log"
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "voiceagents.worker",
                "start",
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every child
            )
        worker = WorkerProcess(process, log_path, agent_name, metrics_port)
        started.append(worker)
        await worker.wait_for_log('"registered worker"')
        return worker

    yield start
    for worker in started:
        await worker.stop()


@dataclass
class PlacedCall:
    call: CallContext
    caller: SimulatedCaller


@pytest.fixture
async def place_call(livekit_server: LiveKitServer) -> AsyncIterator[Callable[..., Any]]:
    """Create the call's room and dispatch it to a worker, as the gateway does."""
    lkapi = api.LiveKitAPI(livekit_server.url, livekit_server.api_key, livekit_server.api_secret)
    callers: list[SimulatedCaller] = []

    async def place(config: AgentRuntimeConfig, agent_name: str) -> PlacedCall:
        call = call_for(config)
        await lkapi.room.create_room(api.CreateRoomRequest(name=call.room, empty_timeout=60))
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=agent_name,
                room=call.room,
                metadata=encode(DispatchMetadata(call=call, grant="test-grant")).decode(),
            )
        )
        caller = SimulatedCaller(
            livekit_url=livekit_server.ws_url,
            api_key=livekit_server.api_key,
            api_secret=livekit_server.api_secret,
            room=call.room,
            call_sid=call.call_sid,
            from_number=call.from_number,
            to_number=call.to_number,
        )
        callers.append(caller)
        return PlacedCall(call=call, caller=caller)

    yield place
    for caller in callers:
        with contextlib.suppress(Exception):
            await caller.hang_up()
    await lkapi.aclose()


@pytest.fixture
async def agent_in_kv(nats_ops: Client) -> Callable[..., Any]:
    js = nats_ops.jetstream()
    await bus.ensure_buckets(js)
    kv = await js.key_value(AGENT_CONFIG_BUCKET)

    async def put(config: AgentRuntimeConfig) -> AgentRuntimeConfig:
        await kv.put(config.agent_id, encode(config))
        return config

    return put


class CallEventLog:
    """Every call event published on this NATS server, raw and decoded."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.events: list[CallEvent] = []
        self.changed = asyncio.Event()

    async def handle(self, msg: Any) -> None:
        self.raw.append(msg.data)
        self.events.append(decode_union(msg.data, AnyCallEvent))
        self.changed.set()

    async def wait_for(self, kind: type[CallEvent], call_sid: str, timeout: float = 30.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and event.call_sid == call_sid:
                        return event
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def call_events(nats_ops: Client) -> AsyncIterator[CallEventLog]:
    log = CallEventLog()
    subscription = await nats_ops.subscribe(CALLS_SUBJECTS, cb=log.handle)
    yield log
    await subscription.unsubscribe()
