"""End to end: how fast a phone call is greeted, and how many calls one worker carries — ours
next to the bare livekit-agents bot a user would otherwise write (bench/bare_worker.py).

Everything runs on loopback as real processes. "Ours" is devstack's `Stack` (PostgreSQL, NATS,
LiveKit, registry, tool-vault, gateway, one voice worker process with the offline stand-in model
at time-to-first-audio 0) and an agent made through the registry's REST API with the clock tool
and the CRM tool (API key in tool-vault, released on every call). The baseline is
bench/bare_worker.py on the same LiveKit server: the same offline model, greeting and voice, the
agent hard-coded. Callers are devstack's `SimulatedCaller`: a participant of kind SIP with
LiveKit SIP's attributes that hears the agent's audio and detects speech in it (RMS).
Calls of the two workers alternate, so both see the same load from the rest of the machine.

1. Time to greeting, calls one after another (`--calls`, default 50), two passes per worker:
   - *bridged*: the caller joins `--bridge-ms` (default 500) after the webhook was answered (ours:
     a Twilio-signed webhook, the gateway creates room + dispatch) or after the room + dispatch
     were created (bare: by the benchmark, as the gateway would), as LiveKit SIP joins a phone
     leg only once Twilio has dialled it. `greeting_after_join_*`: caller joined (connected,
     microphone published) -> first greeting audio frame at the caller.
   - *immediate*: the caller joins as soon as the webhook is answered (no SIP leg at all), so
     the whole path is on the clock: `greeting_after_webhook_*` (webhook sent -> first greeting
     frame; bare: room + dispatch requested -> first greeting frame).
2. Capacity: concurrent calls against the one worker process, ramped in steps. Each call talks
   for its whole length: its line always carries audio at real-time pace (a spoken sentence,
   then silence until the agent has answered, as a phone line does), and the agent answers each
   sentence with a scripted reply spoken at real-time pace. A step keeps real time when every
   call got every answer, the answers come as fast as at one call (reply delay p95 within
   `REPLY_SLACK_MS` of the one-call median) and the agent's speech reaches the caller whole
   (first to last loud frame of an answer within `STRETCH_LIMIT` of its spoken length: gaps
   stretch it). `realtime_calls` is the largest step before the first that does not; the ramp
   goes on past it while every answer still comes (for more CPU and memory points), and stops
   when the worker's process tree uses 90 % of the machine's cores.
   CPU is the worker's whole process tree (main process, forkserver, every job process; psutil).
   `calls_per_core` = 1 / `worker_cores_per_call`, the least-squares growth of the tree's CPU
   per added call over the idle worker and the real-time steps (past those the worker no longer
   gets the CPU it needs, which would understate a call's cost). `rss_per_call_mb` is the
   least-squares growth per call of the tree's unique memory (USS), as in bench_worker.

Run: `make bench-e2e` (or `.venv/bin/python bench/bench_e2e.py [--calls N] [--quick]`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import numpy as np
import numpy.typing as npt
import psutil  # type: ignore[import-untyped]
from livekit import api, rtc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import cpu_seconds, percentile, tree_processes, write_results
from voiceagents.devstack.phone import (
    FRAME_MS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SPEECH_RMS,
    HeardSpeech,
    SimulatedCaller,
    TwilioSimulator,
    rms,
    sip_user,
    synthesize,
)
from voiceagents.devstack.servers import LiveKitServer
from voiceagents.devstack.stack import Stack
from voiceagents.worker import offline_model
from voiceagents.worker.offline_model import OfflineScript, ScriptBook

BENCH_DIR = Path(__file__).resolve().parent
AGENT_NAME = "Ada"
VOICE = "Puck"
FROM_NUMBER = "+14155550123"
TO_NUMBER = "+14155550100"
PUBLIC_BASE_URL = "https://voice.example.com"
# What the caller says in the capacity run, and what the agent answers every time.
CALLER_LINE = "Can I book an appointment for tomorrow morning?"
AGENT_REPLY = "Of course. Let me look at the calendar for tomorrow."
# A step keeps real time while answers come this close to the one-call median (p95) ...
REPLY_SLACK_MS = 250.0
# ... and the agent's speech is heard at most this much longer than it was spoken (p95).
STRETCH_LIMIT = 1.10
# The worker is saturated when its process tree uses this share of the machine's cores.
SATURATED = 0.9
# Past real time, the ramp goes on (for CPU and memory figures) until answers take this long,
GIVE_UP_MS = 3000.0
# or the callers (this process) fall this far behind their own clock: the step says nothing
# about the worker then, and a starved WebRTC client can panic on hang-up.
CALLERS_LATE_MS = 250.0
WARMUP_CALLS = 2
STEPS = [1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64]
QUICK_STEPS = [1, 2, 4]


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


# -- the two workers under test ----------------------------------------------------------------


@dataclass
class PlacedCall:
    room: str
    call_sid: str
    # When the webhook (ours) or the room + dispatch request (bare) was sent.
    requested_at: float
    # When the gateway's TwiML (ours) or LiveKit's dispatch answer (bare) was back.
    answered_at: float


@dataclass
class Target:
    """One worker under test and how a call is placed to it and ended."""

    name: str
    worker_pid: int
    livekit: LiveKitServer
    place: Callable[[], Awaitable[PlacedCall]]
    end: Callable[[PlacedCall], Awaitable[None]]
    log: Path

    def process_init_ms(self) -> list[float]:
        """How long each job process took to start and warm up (livekit-agents logs it)."""
        return [
            float(m) * 1000
            for m in re.findall(
                r'"process initialized".*?"elapsed_time": ([0-9.]+)', self.log.read_text()
            )
        ]

    async def until_warm(self) -> None:
        """Until no job process is starting: the pool has replaced the one the last call used."""
        async with asyncio.timeout(60):
            while True:
                text = self.log.read_text(errors="replace")
                started = set(re.findall(r'"initializing process".*?"pid": (\d+)', text))
                ready = set(re.findall(r'"process initialized".*?"pid": (\d+)', text))
                # A process killed before it was ready never says so: only living ones count.
                if not any(psutil.pid_exists(int(pid)) for pid in started - ready):
                    return
                await asyncio.sleep(0.1)


def script_file(workdir: Path, book: bool) -> Path:
    """The offline model's script: no scripted turns, every caller sentence gets AGENT_REPLY."""
    script = OfflineScript(turns=[], fallback=AGENT_REPLY)
    path = workdir / ("scriptbook.json" if book else "script.json")
    path.write_bytes(msgspec.json.encode(ScriptBook(default=script) if book else script))
    return path


async def provision(stack: Stack) -> None:
    """The demo's shape of agent, made through the registry's REST API as an admin would: an
    organization, an agent on TO_NUMBER, the clock tool and the CRM tool (API key in
    tool-vault, so every call asks tool-vault for it)."""
    async with httpx.AsyncClient(
        base_url=stack.registry_url,
        headers={"Authorization": f"Bearer {stack.admin_key}"},
        timeout=20,
    ) as client:

        async def post(path: str, body: dict[str, object], method: str = "POST") -> dict[str, str]:
            response = await client.request(method, path, json=body)
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            answer: dict[str, str] = response.json()
            return answer

        async with asyncio.timeout(60):  # the worker reports its code tools after it starts
            while True:
                tools = (await client.get("/api/v1/tools/platform")).json()
                if any(t["name"] == "crm" and t["available"] for t in tools):
                    break
                await asyncio.sleep(0.2)
        org = await post("/api/v1/organizations", {"name": "Bench Dental"})
        agent = await post(
            "/api/v1/agents",
            {
                "organization_id": org["id"],
                "name": AGENT_NAME,
                "system_prompt": "You are Ada, the receptionist of Bench Dental.",
                "voice": VOICE,
                "phone_number": TO_NUMBER,
            },
        )
        await post("/api/v1/tools/agent", {"agent_id": agent["id"], "tool_name": "clock"})
        crm = await post(
            "/api/v1/tools/agent",
            {
                "agent_id": agent["id"],
                "tool_name": "crm",
                "config": {"base_url": "https://bench.zendesk.example", "email": "a@example.com"},
            },
        )
        await post(
            f"/api/v1/tools/agent/{crm['id']}/secrets",
            {"tool_name": "crm", "secrets": {"api_key": secrets.token_hex(16)}},
            method="PUT",
        )


async def wait_until_routed(twilio: TwilioSimulator) -> None:
    """Until the gateway bridges calls to TO_NUMBER (the projection has reached its mirror)."""
    async with asyncio.timeout(60):
        while True:
            call_sid = "CA" + uuid.uuid4().hex
            answer = await twilio.incoming(call_sid, FROM_NUMBER, TO_NUMBER)
            await twilio.status(call_sid, "completed", 0)
            if answer.sip_uri is not None:
                return
            await asyncio.sleep(0.2)


def ours(stack: Stack) -> Target:
    """The whole stack (devstack's `Stack`): a Twilio-signed webhook to the gateway, which
    creates the room and dispatches the call to the one voice worker process."""
    assert stack.livekit is not None
    twilio = TwilioSimulator(
        gateway_url=stack.gateway_url,
        public_base_url=stack.gateway_url,
        auth_token=stack.twilio_auth_token,
    )
    worker = stack.service("worker").process
    assert worker is not None and worker.proc is not None

    async def place() -> PlacedCall:
        call_sid = "CA" + uuid.uuid4().hex
        answer = await twilio.incoming(call_sid, FROM_NUMBER, TO_NUMBER)
        if answer.sip_uri is None:
            raise RuntimeError(f"the gateway did not bridge the call: {answer.body}")
        return PlacedCall(
            room=f"call_{sip_user(answer.sip_uri)}",
            call_sid=call_sid,
            requested_at=answer.received_at - answer.elapsed_ms / 1000,
            answered_at=answer.received_at,
        )

    async def end(call: PlacedCall) -> None:
        await twilio.status(call.call_sid, "completed", 1)

    log = stack.service("worker").log_path
    return Target("ours", worker.proc.pid, stack.livekit, place, end, log)


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with suppress(TimeoutError):
            async with asyncio.timeout(30):
                await process.wait()
    # Whatever it left behind (its forkserver and job processes share its process group).
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


@asynccontextmanager
async def bare(livekit: LiveKitServer, workdir: Path) -> AsyncIterator[Target]:
    """The hand-written bot on the same LiveKit server, dispatched by the benchmark itself (room
    + explicit dispatch, as the gateway does it)."""
    agent_name = f"bare-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        **livekit.environment(),
        "BARE_AGENT_NAME": agent_name,
        "BARE_SCRIPT": str(script_file(workdir, book=False)),
    }
    log_path = workdir / "bare-worker.log"
    async with AsyncExitStack() as stack:
        with log_path.open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, str(BENCH_DIR / "bare_worker.py"), "start",
                env=env, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        stack.push_async_callback(stop_process, worker)
        lkapi = api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret)
        stack.push_async_callback(lkapi.aclose)
        async with asyncio.timeout(90):
            while "registered worker" not in log_path.read_text(errors="replace"):
                if worker.returncode is not None:
                    raise RuntimeError(f"the bare worker exited during start-up; log {log_path}")
                await asyncio.sleep(0.1)

        async def place() -> PlacedCall:
            call_sid = "CA" + uuid.uuid4().hex
            room = f"call_{call_sid}"
            requested = time.perf_counter()
            await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
            await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
            )
            return PlacedCall(room, call_sid, requested, time.perf_counter())

        async def end(call: PlacedCall) -> None:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=call.room))

        print(f"bare worker log: {log_path}")
        yield Target("bare", worker.pid, livekit, place, end, log_path)


# -- callers -----------------------------------------------------------------------------------


class TalkingCaller(SimulatedCaller):
    """A caller whose line always carries audio at real-time pace, as a phone line does: a
    sentence, then silence until the agent has answered it, then the next sentence. It times
    each answer (from the end of its sentence) and how long the answer lasted as heard."""

    # A stretch of agent speech ends after this much quiet (words are 60 ms apart) ...
    QUIET_S = 0.4
    # ... and the caller speaks again after this much (a gap shorter than this within an
    # answer is part of the answer).
    PAUSE_S = 1.0

    def __init__(self, *, sentence: npt.NDArray[np.int16], **kwargs: str) -> None:
        super().__init__(**kwargs)
        step = SAMPLES_PER_FRAME
        self._frames = [sentence[i : i + step] for i in range(0, len(sentence) - step + 1, step)]
        self.replies_ms: list[float] = []
        self.heard_s: list[float] = []
        self.missed = 0
        self.late_ms = 0.0  # how far this caller's sender fell behind its own clock, at worst

    async def talk(self, stop: asyncio.Event) -> None:
        silence = np.zeros(SAMPLES_PER_FRAME, np.int16)
        frame_s = FRAME_MS / 1000
        next_at = time.perf_counter()

        async def send(chunk: npt.NDArray[np.int16]) -> None:
            nonlocal next_at
            frame = rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
            await self._source.capture_frame(frame)
            next_at += frame_s
            now = time.perf_counter()
            self.late_ms = max(self.late_ms, (now - next_at) * 1000)
            if next_at > now:
                await asyncio.sleep(next_at - now)

        while not stop.is_set():
            for chunk in self._frames:
                await send(chunk)
            said_at = next_at
            # Silence until the answer has been heard to its end (or never came).
            while not stop.is_set():
                answer = [s for s in self.speech if s.started_at > said_at]
                now = time.perf_counter()
                ended = answer[-1].ended_at if answer else None
                if ended is not None and now - ended >= self.PAUSE_S:
                    self.replies_ms.append((answer[0].started_at - said_at) * 1000)
                    # From its first to its last loud frame: a gap in the middle lengthens it.
                    self.heard_s.append(ended - answer[0].started_at)
                    break
                if not answer and now - said_at > 10.0:
                    self.missed += 1
                    break
                await send(silence)

    def reset_stats(self) -> None:
        self.replies_ms.clear()
        self.heard_s.clear()
        self.missed = 0
        self.late_ms = 0.0

    async def _listen(self, stream: rtc.AudioStream) -> None:
        # As SimulatedCaller's, but with each frame's real length (the stream's frames are
        # 10 ms) and the end of speech dated at the end of its last loud frame.
        current: HeardSpeech | None = None
        last_loud_end = 0.0
        async for event in stream:
            frame = event.frame
            now = time.perf_counter()
            if rms(frame.data.cast("B")) >= SPEECH_RMS:
                last_loud_end = now
                if current is None:
                    current = HeardSpeech(started_at=now - frame.duration)
                    self.speech.append(current)
                    self._speech_ended.clear()
                    self._speech_started.set()
            elif current is not None and now - last_loud_end >= self.QUIET_S:
                current.ended_at = last_loud_end
                current = None
                self._speech_ended.set()


def new_caller(
    target: Target, call: PlacedCall, sentence: npt.NDArray[np.int16] | None = None
) -> SimulatedCaller:
    options = {
        "livekit_url": target.livekit.ws_url,
        "api_key": target.livekit.api_key,
        "api_secret": target.livekit.api_secret,
        "room": call.room,
        "call_sid": call.call_sid,
        "from_number": FROM_NUMBER,
        "to_number": TO_NUMBER,
    }
    if sentence is None:
        return SimulatedCaller(**options)
    return TalkingCaller(sentence=sentence, **options)


# -- 1. time to greeting -----------------------------------------------------------------------


@dataclass
class Greetings:
    after_join_ms: list[float] = field(default_factory=list)
    after_request_ms: list[float] = field(default_factory=list)
    join_ms: list[float] = field(default_factory=list)
    failed: int = 0


async def greeting_call(target: Target, bridge_ms: float, into: Greetings | None) -> None:
    """One call: placed, the caller joins `bridge_ms` after the answer, hears the greeting's
    first audio frame, hangs up."""
    call = await target.place()
    caller = new_caller(target, call)
    try:
        delay = call.answered_at + bridge_ms / 1000 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        join_started = time.perf_counter()
        joined = await caller.join()
        heard = await caller.wait_for_agent_speech(15)
        if into is not None:
            into.after_join_ms.append((heard.started_at - joined) * 1000)
            into.after_request_ms.append((heard.started_at - call.requested_at) * 1000)
            into.join_ms.append((joined - join_started) * 1000)
    except TimeoutError:
        if into is not None:
            into.failed += 1
    finally:
        await caller.hang_up()
        await target.end(call)


async def greetings(targets: list[Target], calls: int, bridge_ms: float) -> dict[str, Greetings]:
    """`calls` calls to each target, one at a time, alternating between the targets so that
    both see the same machine load."""
    results = {target.name: Greetings() for target in targets}
    for target in targets:  # warm-up: new agent config, first job processes
        for _ in range(WARMUP_CALLS):
            await target.until_warm()
            await greeting_call(target, bridge_ms, None)
    for _ in range(calls):
        for target in targets:
            # Each call finds a warm worker (how fast the pool refills is reported apart).
            await target.until_warm()
            await greeting_call(target, bridge_ms, results[target.name])
    return results


# -- 2. capacity -------------------------------------------------------------------------------


def tree_uss_mb(pid: int) -> float:
    total = 0
    for process in tree_processes(pid):
        try:
            total += process.memory_full_info().uss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def process_cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class Step:
    calls: int
    worker_cores: float
    livekit_cores: float
    bench_cores: float
    idle_share: float
    uss_mb: float
    reply_p50_ms: float
    reply_p95_ms: float
    stretch_p95: float
    missed: int
    sender_late_ms: float


@dataclass
class Capacity:
    steps: list[Step]
    realtime_calls: int
    stopped_because: str
    rss_per_call_mb: float
    # Least-squares growth of the worker tree's CPU per added call, over every step.
    cores_per_call: float

    @property
    def last_good(self) -> Step:
        return next(s for s in reversed(self.steps) if s.calls == self.realtime_calls)


def slope(points: list[tuple[float, float]]) -> float:
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in points)
    denominator = sum((x - mean_x) ** 2 for x, _ in points)
    return numerator / denominator if denominator else 0.0


def livekit_process() -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        if child.name().startswith("livekit-server"):
            return child
    raise RuntimeError("livekit-server is not a child of this benchmark")


async def capacity(
    target: Target, steps: list[int], window: float, sentence: npt.NDArray[np.int16]
) -> Capacity:
    # The answer as spoken, without its trailing silence (60 ms after the last word).
    pcm = offline_model.synthesize(AGENT_REPLY, VOICE)
    spoken_s = len(pcm) / 2 / offline_model.SAMPLE_RATE - 0.06
    livekit = livekit_process()
    me = psutil.Process()
    cpus = psutil.cpu_count()
    stop = asyncio.Event()
    # Every call placed (hung up at the end, also when its start failed) and the talking ones.
    placed: list[tuple[PlacedCall, TalkingCaller]] = []
    live: list[tuple[TalkingCaller, asyncio.Task[None]]] = []
    memory: list[tuple[float, float]] = [(0.0, tree_uss_mb(target.worker_pid))]
    idle: Step | None = None
    results: list[Step] = []
    baseline_ms: float | None = None
    realtime_calls = 0
    stopped: str | None = None

    async def add_call() -> None:
        call = await target.place()
        caller = new_caller(target, call, sentence)
        assert isinstance(caller, TalkingCaller)
        placed.append((call, caller))
        joined = await caller.join()
        await caller.wait_until_agent_quiet(30)
        # The greeting (3.2 s) is surely over: now the caller talks.
        await asyncio.sleep(max(0.0, joined + 6.0 - time.perf_counter()))
        live.append((caller, asyncio.create_task(caller.talk(stop))))

    try:
        for calls in [0, *steps]:  # 0: the idle worker's own CPU
            added = calls - len(placed)
            starts = []
            for _ in range(added):
                starts.append(asyncio.create_task(add_call()))
                await asyncio.sleep(0.25)
            try:
                async with asyncio.timeout(60):
                    await asyncio.gather(*starts)
            except TimeoutError:
                stopped = stopped or f"{calls} calls: not every new call was greeted in time"
                break
            await asyncio.sleep(3.0)
            for caller, _ in live:
                caller.reset_stats()
            cpu0 = (cpu_seconds(target.worker_pid), process_cpu_seconds(livekit))
            bench0, machine0 = process_cpu_seconds(me), psutil.cpu_times()
            started = time.perf_counter()
            await asyncio.sleep(window)
            elapsed = time.perf_counter() - started
            machine1 = psutil.cpu_times()
            busy = sum(machine1) - sum(machine0)
            replies = [r for c, _ in live for r in c.replies_ms]
            stretches = [h / spoken_s for c, _ in live for h in c.heard_s]
            step = Step(
                calls=calls,
                worker_cores=(cpu_seconds(target.worker_pid) - cpu0[0]) / elapsed,
                livekit_cores=(process_cpu_seconds(livekit) - cpu0[1]) / elapsed,
                bench_cores=(process_cpu_seconds(me) - bench0) / elapsed,
                idle_share=(machine1.idle - machine0.idle) / busy if busy else 0.0,
                uss_mb=tree_uss_mb(target.worker_pid),
                reply_p50_ms=percentile(replies, 50) if replies else float("inf"),
                reply_p95_ms=percentile(replies, 95) if replies else float("inf"),
                stretch_p95=percentile(stretches, 95) if stretches else float("inf"),
                missed=sum(c.missed for c, _ in live),
                sender_late_ms=max((c.late_ms for c, _ in live), default=0.0),
            )
            if calls == 0:
                idle = step
                continue
            results.append(step)
            memory.append((float(calls), step.uss_mb))
            print(
                f"  {target.name} {calls:3d} calls: worker {step.worker_cores:.2f} cores, "
                f"livekit {step.livekit_cores:.2f}, callers {step.bench_cores:.2f}, "
                f"idle {step.idle_share:.0%}, reply p50/p95 {step.reply_p50_ms:.0f}/"
                f"{step.reply_p95_ms:.0f} ms, stretch p95 {step.stretch_p95:.3f}, "
                f"missed {step.missed}, sender late {step.sender_late_ms:.0f} ms, "
                f"USS {step.uss_mb:.0f} MB"
            )
            if baseline_ms is None:
                baseline_ms = step.reply_p50_ms
            behind = (
                step.sender_late_ms > CALLERS_LATE_MS
                or step.missed > 0
                or step.reply_p95_ms > baseline_ms + REPLY_SLACK_MS
                or step.stretch_p95 > STRETCH_LIMIT
            )
            if behind and stopped is None:
                stopped = (
                    f"{calls} calls: audio fell behind real time (reply p95 "
                    f"{step.reply_p95_ms:.0f} ms vs {baseline_ms:.0f} at one call, stretch p95 "
                    f"{step.stretch_p95:.3f}, {step.missed} answers missed)"
                )
            if stopped is None:
                realtime_calls = calls
            if step.worker_cores >= SATURATED * cpus:
                stopped = stopped or f"{calls} calls: the worker's CPU is saturated"
                break
            # Past the last real-time step the ramp goes on while every answer still comes, for
            # more points of CPU and memory per call.
            if step.missed > 0 or step.reply_p95_ms > GIVE_UP_MS:
                break
            if step.sender_late_ms > CALLERS_LATE_MS:
                stopped = stopped or f"{calls} calls: the simulated callers fell behind"
                break
    finally:
        stop.set()
        await asyncio.gather(*(task for _, task in live), return_exceptions=True)
        for call, caller in placed:
            await caller.hang_up()
            await target.end(call)
        await asyncio.sleep(5.0)  # the calls' job processes end before the next worker's ramp
    if realtime_calls == 0:
        raise RuntimeError(f"{target.name}: not even one call kept real time ({stopped})")
    # CPU per call from the idle worker and the steps that kept real time only: past those, the
    # worker no longer gets all the CPU it needs, which would understate the cost of a call.
    assert idle is not None
    kept = [s for s in results if s.calls <= realtime_calls]
    cpu_per_call = slope([(float(s.calls), s.worker_cores) for s in [idle, *kept]])
    return Capacity(
        results,
        realtime_calls,
        stopped or "every step kept real time",
        rss_per_call_mb=slope(memory),
        cores_per_call=cpu_per_call,
    )


# -- the run -----------------------------------------------------------------------------------


def greeting_figures(prefix: str, bridged: Greetings, immediate: Greetings) -> dict[str, float]:
    after = "dispatch" if prefix else "webhook"
    return {
        f"{prefix}greeting_after_join_p50_ms": percentile(bridged.after_join_ms, 50),
        f"{prefix}greeting_after_join_p95_ms": percentile(bridged.after_join_ms, 95),
        f"{prefix}greeting_after_{after}_p50_ms": percentile(immediate.after_request_ms, 50),
        f"{prefix}greeting_after_{after}_p95_ms": percentile(immediate.after_request_ms, 95),
        f"{prefix}greeting_after_join_immediate_p50_ms": percentile(immediate.after_join_ms, 50),
        f"{prefix}greeting_after_join_immediate_p95_ms": percentile(immediate.after_join_ms, 95),
        f"{prefix}caller_join_p50_ms": percentile(bridged.join_ms, 50),
        f"{prefix}greeting_failed_calls": float(bridged.failed + immediate.failed),
    }


def pool_figures(prefix: str, target: Target) -> dict[str, float]:
    init_ms = target.process_init_ms()
    return {
        f"{prefix}job_process_init_p50_ms": percentile(init_ms, 50),
        f"{prefix}job_process_init_p95_ms": percentile(init_ms, 95),
    }


def capacity_figures(prefix: str, cap: Capacity) -> dict[str, float]:
    good = cap.last_good
    return {
        f"{prefix}calls_per_core": 1 / cap.cores_per_call,
        f"{prefix}worker_cores_per_call": cap.cores_per_call,
        f"{prefix}realtime_calls": float(cap.realtime_calls),
        f"{prefix}max_calls_ramped": float(cap.steps[-1].calls),
        f"{prefix}worker_cores_at_realtime_calls": good.worker_cores,
        f"{prefix}livekit_cores_per_call": good.livekit_cores / good.calls,
        f"{prefix}callers_cores_per_call": good.bench_cores / good.calls,
        f"{prefix}reply_p50_ms_one_call": cap.steps[0].reply_p50_ms,
        f"{prefix}reply_p95_ms_at_realtime_calls": good.reply_p95_ms,
        f"{prefix}rss_per_call_mb": cap.rss_per_call_mb,
    }


async def run(calls: int, bridge_ms: float, steps: list[int], window: float) -> None:
    load_before = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    sentence = synthesize(CALLER_LINE)
    stack = Stack(
        run_dir=workdir / "stack",
        model="offline",
        offline_script=script_file(workdir, book=True),
        worker_settings={
            "VA_WORKER_OFFLINE_FIRST_AUDIO_MS": "0",
            # The ramp, not admission, decides how many calls run.
            "VA_WORKER_MAX_CALLS": "500",
        },
    )
    print(f"starting the stack (logs in {stack.log_dir})")
    with stack:
        assert stack.livekit is not None
        await provision(stack)
        target = ours(stack)
        twilio = TwilioSimulator(stack.gateway_url, stack.gateway_url, stack.twilio_auth_token)
        await wait_until_routed(twilio)
        await twilio.aclose()
        async with bare(stack.livekit, workdir) as baseline:
            both = [target, baseline]
            print(f"time to greeting: {calls} calls each, caller joins {bridge_ms:.0f} ms later")
            bridged = await greetings(both, calls, bridge_ms)
            print(f"time to greeting: {calls} calls each, caller joins at once")
            immediate = await greetings(both, calls, 0.0)
            for name in bridged:
                print(f"  {name}: {greeting_figures(name + '_', bridged[name], immediate[name])}")
            print(f"capacity of one worker: steps {steps}, {window:.0f} s each")
            capacities = {}
            for each in both:
                capacities[each.name] = await capacity(each, steps, window, sentence)
    load_after = load_average()
    ours_figures = {
        **greeting_figures("", bridged["ours"], immediate["ours"]),
        **capacity_figures("", capacities["ours"]),
        **pool_figures("", target),
    }
    bare_figures = {
        **greeting_figures("bare_", bridged["bare"], immediate["bare"]),
        **capacity_figures("bare_", capacities["bare"]),
        **pool_figures("bare_", baseline),
    }
    headline = [
        "greeting_after_join_p50_ms",
        "greeting_after_join_p95_ms",
        "greeting_after_webhook_p50_ms",
        "greeting_after_webhook_p95_ms",
        "calls_per_core",
        "rss_per_call_mb",
    ]
    figures = {key: ours_figures.pop(key) for key in headline}
    figures["bare_greeting_after_join_p95_ms"] = bare_figures.pop("bare_greeting_after_join_p95_ms")
    figures["bare_calls_per_core"] = bare_figures.pop("bare_calls_per_core")
    figures["greeting_after_join_p95_ratio"] = (
        figures["greeting_after_join_p95_ms"] / figures["bare_greeting_after_join_p95_ms"]
    )
    figures["calls_per_core_ratio"] = figures["calls_per_core"] / figures["bare_calls_per_core"]
    figures |= ours_figures | bare_figures
    figures |= {
        "calls_per_pass": float(calls),
        "bridge_ms": bridge_ms,
        "cpu_count": float(psutil.cpu_count()),
        "load_1m_before": load_before[0],
        "load_1m_after": load_after[0],
    }
    for name, cap in capacities.items():
        print(f"{name} capacity: {cap.stopped_because}")
    write_results(
        "e2e",
        figures,
        {
            "greeting_after_join_p95_ms": "<= 150",
            "calls_per_core": ">= 25",
            "greeting_after_join_p95_ratio": "<= 1.05",
            "calls_per_core_ratio": ">= 0.95",
        },
    )
    print(f"load average before/after: {load_before} / {load_after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per time-to-greeting pass")
    parser.add_argument("--bridge-ms", type=float, default=500.0, help="SIP leg set-up time")
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured per step")
    parser.add_argument("--quick", action="store_true", help="5 calls, 3 short capacity steps")
    parser.add_argument("--steps", help="capacity steps, comma-separated (e.g. 1,4,8)")
    args = parser.parse_args()
    calls, steps, window = args.calls, STEPS, args.window
    if args.quick:
        calls, steps, window = min(calls, 5), QUICK_STEPS, min(window, 8.0)
    if args.steps:
        steps = [int(n) for n in args.steps.split(",")]
    asyncio.run(run(calls, args.bridge_ms, steps, window))


if __name__ == "__main__":
    main()
