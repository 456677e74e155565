"""Voice worker: how fast a call is ready, what wrapping a tool costs, what a call weighs.

1. Dispatch -> ready to greet, over 200 jobs: what the job's entrypoint does before it can
   greet — decode the dispatch metadata, connect to NATS as `worker`, read the agent's config
   from the in-memory mirror, get the credentials of an API-key tool from a tool-vault stand-in
   over NATS (X25519 sealed box, as tool-vault answers), build the whole tool list. The model
   connection is excluded (it is Gemini's network time, not ours).
2. Wrapper overhead per tool call: a tool function called through its LiveKit wrapper (exact
   signature binding, timeout, filler timer, redaction, call event) minus the same method
   called directly, mean over many calls.
3. Memory per concurrent call: a real worker process (`python -m voiceagents.worker start`,
   offline stand-in model) on a real LiveKit server takes 1..4 concurrent calls from simulated
   SIP callers; each call runs in its own job process, so the figure is the growth of the
   worker's whole process tree (unique memory, USS: pages not shared with the forkserver) per
   added call, least-squares slope.

Run: `make bench-worker` (or `.venv/bin/python bench/bench_worker.py`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import psutil  # type: ignore[import-untyped]
from livekit import api
from livekit.agents import RunContext
from nacl.public import PublicKey, SealedBox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import percentile, write_results
from voiceagents.contracts import bus
from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET, AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, DispatchMetadata
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.tools import ToolFunctionSpec
from voiceagents.contracts.toolvault import (
    RELEASE_SUBJECT,
    CredentialReleaseReply,
    CredentialReleaseRequest,
    ReleasedCredentials,
    ToolCredentials,
)
from voiceagents.devstack.phone import SimulatedCaller
from voiceagents.devstack.servers import LiveKitServer, NatsServer, free_port
from voiceagents.worker.call import WorkerRuntime, prepare_call
from voiceagents.worker.events import CallEvents
from voiceagents.worker.offline_model import OfflineScript, OfflineVoice, ScriptBook, ScriptTurn
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import PhraseAudio
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function
from voiceagents.worker.tools.discovery import discover
from voiceagents.worker.tools.execution import FunctionBinding, ToolRunner
from voiceagents.worker.tools.wrapping import wrap_method

JOBS = 200
WRAPPER_CALLS = 20_000
MAX_CALLS = 4


class Crm(BaseTool):
    """A bench tool with an API key and a few parameters."""

    metadata = ToolMetadata(name="bench_crm", description="Customer lookup", auth_type="api_key")

    @tool_function(idempotent=True, redact_arguments=["email"])
    async def find_customer(
        self,
        context: RunContext[Any],
        phone: str,
        email: str | None = None,
        limit: int = 1,
    ) -> dict[str, Any]:
        """Find a customer by phone number.

        Args:
            phone: E.164 phone number.
        """
        return {"phone": phone, "name": "Ada", "limit": limit}


def agent(agent_id: str, tools: list[ToolBinding]) -> AgentRuntimeConfig:
    return AgentRuntimeConfig(
        agent_id=agent_id,
        org_id="org-bench",
        version=1,
        name="Ada",
        system_prompt="You are Ada.",
        tools=tools,
    )


def call_for(config: AgentRuntimeConfig) -> CallContext:
    sid = f"CA{uuid.uuid4().hex}"
    return CallContext(
        call_sid=sid,
        room=f"call_{sid}",
        org_id=config.org_id,
        agent_id=config.agent_id,
        agent_version=1,
        from_number="+14155550123",
        to_number="+14155550100",
        started_at=datetime.now(UTC),
    )


async def tool_vault_stand_in(nats_server: NatsServer) -> Any:
    nc = await nats.connect(**nats_server.credentials("toolvault"))

    async def handle(msg: Any) -> None:
        request = decode(msg.data, CredentialReleaseRequest)
        released = ReleasedCredentials(
            credentials=[
                ToolCredentials(agent_tool_id=i, kind="api_key", secrets={"api_key": "k"})
                for i in request.agent_tool_ids
            ]
        )
        box = SealedBox(PublicKey(base64.b64decode(request.worker_public_key)))
        sealed = base64.b64encode(box.encrypt(encode(released))).decode()
        await msg.respond(encode(CredentialReleaseReply(sealed_credentials=sealed)))

    await nc.subscribe(RELEASE_SUBJECT, cb=handle)
    return nc


async def ready_times(nats_server: NatsServer) -> list[float]:
    vault = await tool_vault_stand_in(nats_server)
    config = agent(
        "agent-bench",
        [
            ToolBinding(
                agent_tool_id="at-crm",
                tool_name="bench_crm",
                auth_type="api_key",
                functions=[ToolFunctionSpec(name="find_customer", description="")],
            ),
            ToolBinding(
                agent_tool_id="at-clock",
                tool_name="clock",
                functions=[
                    ToolFunctionSpec(name="current_time", description=""),
                    ToolFunctionSpec(name="current_date", description=""),
                ],
            ),
        ],
    )
    mirror = ConfigMirror()
    mirror.apply_agent(config)
    settings = Settings(
        dev_mode=True,
        model="offline",
        nats_url=nats_server.url,
        nats_password=nats_server.passwords["worker"],
    )
    runtime = WorkerRuntime(
        settings=settings,
        mirror=mirror,
        tool_classes={**discover(), "bench_crm": Crm},
        phrases=PhraseAudio(OfflineVoice(), None),
        scripts=ScriptBook(),
    )
    samples: list[float] = []
    for _ in range(JOBS + 10):
        metadata = encode(DispatchMetadata(call=call_for(config), grant="bench-grant"))
        started = time.perf_counter()
        dispatch = decode(metadata, DispatchMetadata)
        nc = await bus.connect(settings.nats_url, "worker", settings.nats_password)
        state = await prepare_call(runtime, dispatch, nc=nc, js=None, started=started)
        samples.append((time.perf_counter() - started) * 1000)
        # The agent's 3 functions and end_call, the system tool every call has.
        assert not state.credentials.unavailable and len(state.tools.tools) == 4
        await nc.close()
    await vault.close()
    return samples[10:]  # the first jobs warm imports and caches


class _Context:
    """Stands for livekit's RunContext (the wrapper only passes it on)."""


async def wrapper_overhead_us() -> float:
    call = call_for(agent("agent-bench", []))
    events = CallEvents(None, call)
    runner = ToolRunner(report=events.tool_invoked, filler=lambda _: None)
    tool = Crm(config={}, credentials=None)
    binding = FunctionBinding(
        tool_name="bench_crm",
        agent_tool_id="at-crm",
        function="find_customer",
        idempotent=True,
        redact_arguments=frozenset({"email"}),
    )
    wrapped = wrap_method(tool.find_customer, binding, runner)
    context: Any = _Context()
    arguments: dict[str, Any] = {"phone": "+14155550123", "email": "ada@example.com", "limit": 1}

    # Each call yields to the event loop once, as a call inside a live session does, so the
    # wrapper's call event is published within the measured time, not piled up after it.
    async def direct() -> None:
        for _ in range(WRAPPER_CALLS):
            await tool.find_customer(context, **arguments)
            await asyncio.sleep(0)

    async def through_wrapper() -> None:
        for _ in range(WRAPPER_CALLS):
            # As livekit-agents calls a function tool: keyword arguments, context included.
            await wrapped(context=context, **arguments)
            await asyncio.sleep(0)
        await events.flush()

    timings: dict[str, list[float]] = {"direct": [], "wrapped": []}
    for _ in range(3):
        for name, run in (("direct", direct), ("wrapped", through_wrapper)):
            started = time.perf_counter()
            await run()
            timings[name].append((time.perf_counter() - started) / WRAPPER_CALLS * 1e6)
    return min(timings["wrapped"]) - min(timings["direct"])


def tree_uss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().uss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def memory_per_call_mb(nats_server: NatsServer, livekit: LiveKitServer) -> float:
    ops = await nats.connect(**nats_server.credentials("ops"))
    js = ops.jetstream()
    await bus.ensure_buckets(js)
    config = agent(f"agent-{uuid.uuid4().hex[:8]}", [])
    await (await js.key_value(AGENT_CONFIG_BUCKET)).put(config.agent_id, encode(config))
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    script = workdir / "script.json"
    script.write_bytes(
        msgspec.json.encode(ScriptBook(default=OfflineScript(turns=[ScriptTurn(say="Sure.")])))
    )
    agent_name = f"bench-agent-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        **nats_server.environment(),
        **livekit.environment(),
        "VA_WORKER_AGENT_NAME": agent_name,
        "VA_WORKER_MODEL": "offline",
        "VA_WORKER_OFFLINE_SCRIPT": str(script),
        "VA_WORKER_MAX_CALLS": str(MAX_CALLS),
        "VA_WORKER_IDLE_PROCESSES": "1",
        "VA_WORKER_HTTP_PORT": str(free_port()),
        "VA_WORKER_METRICS_PORT": str(free_port()),
        "VA_WORKER_PHRASE_CACHE_DIR": str(workdir / "phrases"),
        "VA_WORKER_DEV_MODE": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
    }
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voiceagents.worker", "start", env=env, stdout=log, stderr=log
        )
    lkapi = api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret)
    callers: list[SimulatedCaller] = []
    try:
        while '"registered worker"' not in log_path.read_text(errors="replace"):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # the idle job process is warm and settled
        points = [(0, tree_uss_mb(worker.pid))]
        for n in range(1, MAX_CALLS + 1):
            call = call_for(config)
            await lkapi.room.create_room(api.CreateRoomRequest(name=call.room, empty_timeout=60))
            await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=agent_name,
                    room=call.room,
                    metadata=encode(DispatchMetadata(call=call, grant="g")).decode(),
                )
            )
            caller = SimulatedCaller(
                livekit_url=livekit.ws_url,
                api_key=livekit.api_key,
                api_secret=livekit.api_secret,
                room=call.room,
                call_sid=call.call_sid,
                from_number=call.from_number,
                to_number=call.to_number,
            )
            callers.append(caller)
            await caller.join()
            await caller.wait_until_agent_quiet(30)  # the greeting was heard: the call is up
            await asyncio.sleep(3.0)  # the pool has replaced the warm process it used
            points.append((n, tree_uss_mb(worker.pid)))
            print(f"  {n} call(s): worker tree USS {points[-1][1]:.1f} MB")
    finally:
        for caller in callers:
            await caller.hang_up()
        await lkapi.aclose()
        worker.terminate()
        await worker.wait()
        await ops.close()
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return numerator / sum((x - mean_x) ** 2 for x, _ in points)


async def main() -> None:
    with NatsServer() as nats_server, LiveKitServer() as livekit:
        ready = await ready_times(nats_server)
        overhead = await wrapper_overhead_us()
        per_call = await memory_per_call_mb(nats_server, livekit)
    write_results(
        "worker",
        {
            "ready_p50_ms": percentile(ready, 50),
            "ready_p95_ms": percentile(ready, 95),
            "wrapper_overhead_us": overhead,
            "rss_per_call_mb": per_call,
        },
        {
            "ready_p95_ms": "<= 20",
            "wrapper_overhead_us": "<= 50",
            "rss_per_call_mb": "<= 60",
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
