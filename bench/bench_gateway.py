"""Gateway webhook latency: signed Twilio webhooks against one gateway *process*
(`python -m voiceagents.gateway serve`) with a real LiveKit server and NATS on loopback.

Open-loop load (requests leave on schedule whether or not earlier ones were answered) at 50 and
200 calls/s for 30 s each, every call a new CallSid to a bound number, so every request creates
a LiveKit room with an agent dispatch. Then the floor: the same rate of requests that only get
their signature checked (a forged signature, answered 403 before any work). And LiveKit alone:
the same 200 rooms/s, each with its dispatch and deleted 2 s later, created by the gateway's own
LiveKit client (`CallRooms`) in this process with no gateway at all: the part of the webhook's
latency no gateway can remove on this machine. The breakdown of
where the time goes comes from the gateway's own stage histograms (/metrics). The gateway
process's CPU time per call (Linux /proc) is reported too: on a shared machine it says more
about the gateway's own cost than latency does, and the 1-minute load average says how shared.

Run: `make bench-gateway` (or `.venv/bin/python bench/bench_gateway.py [--seconds 30]`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import nats
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import cpu_seconds, percentile, write_results
from voiceagents.contracts import bus
from voiceagents.contracts.agents import (
    AGENT_CONFIG_BUCKET,
    PHONE_NUMBERS_BUCKET,
    AgentRuntimeConfig,
    PhoneNumberEntry,
    phone_number_key,
)
from voiceagents.contracts.calls import CallContext
from voiceagents.contracts.codec import encode
from voiceagents.devstack.servers import (
    NATS_USERS,
    LiveKitServer,
    NatsServer,
    free_port,
)
from voiceagents.gateway.rooms import CallRooms

PUBLIC_BASE_URL = "https://voice.example.com"
INCOMING = "/api/v1/voice/twilio/incoming"
STATUS = "/api/v1/voice/twilio/status"
# How long each simulated call lasts: its status callback ends it (and deletes its room) then, so
# LiveKit holds rate x CALL_SECONDS live rooms, as with real traffic, not every room ever made.
CALL_SECONDS = 2.0
AUTH_TOKEN = secrets.token_hex(16)
NUMBERS = 20


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0


def signed(path: str, params: dict[str, str]) -> tuple[bytes, str]:
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE_URL + path, params)
    return urlencode(params).encode(), signature


def signed_requests(
    count: int, numbers: list[str], *, forged: bool
) -> list[tuple[bytes, str, tuple[bytes, str]]]:
    """Incoming webhooks (form body, X-Twilio-Signature) and each call's final status callback,
    made before the clock starts."""
    requests = []
    for i in range(count):
        call_sid = "CA" + uuid.uuid4().hex
        params = {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": "+14155550100",
            "To": numbers[i % len(numbers)],
        }
        body, signature = signed(INCOMING, params)
        if forged:
            signature = base64.b64encode(secrets.token_bytes(20)).decode()
        ended = signed(
            STATUS,
            {**params, "CallStatus": "completed", "CallDuration": str(int(CALL_SECONDS))},
        )
        requests.append((body, signature, ended))
    return requests


async def load(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    seconds: float,
    *,
    forged: bool,
    numbers: list[str],
) -> Run:
    requests = signed_requests(int(rate * seconds), numbers, forged=forged)
    run = Run()
    expected_status = 403 if forged else 200

    async def post(path: str, body: bytes, signature: str) -> tuple[int, str]:
        async with session.post(
            url + path,
            data=body,
            headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        ) as response:
            return response.status, await response.text()

    async def one(body: bytes, signature: str, ended: tuple[bytes, str]) -> None:
        started = time.perf_counter()
        try:
            status, text = await post(INCOMING, body, signature)
            elapsed = (time.perf_counter() - started) * 1000
            if status != expected_status or (not forged and "<Sip" not in text):
                run.errors += 1
            run.latencies_ms.append(elapsed)
            if not forged:
                await asyncio.sleep(CALL_SECONDS)
                await post(STATUS, *ended)
        except (aiohttp.ClientError, TimeoutError):
            run.errors += 1

    tasks = []
    start = time.perf_counter()
    for i, (body, signature, ended) in enumerate(requests):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, signature, ended)))
    async with asyncio.timeout(seconds + 30):
        await asyncio.gather(*tasks)
    return run


async def livekit_alone(livekit: LiveKitServer, rate: float, seconds: float) -> Run:
    """Open-loop CreateRoom (with the agent dispatch) at `rate`, each room deleted CALL_SECONDS
    later, through the gateway's LiveKit client and nothing else."""
    rooms = CallRooms(
        url=livekit.url,
        api_key=livekit.api_key,
        api_secret=livekit.api_secret,
        agent_name="voice-agent",
        empty_timeout_seconds=60,
        request_timeout_seconds=10,
    )
    run = Run()

    async def one(call: CallContext) -> None:
        started = time.perf_counter()
        try:
            await rooms.create(call, grant="x" * 400)  # about a real grant's length
            run.latencies_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(CALL_SECONDS)
            await rooms.delete(call.room)
        except Exception:
            run.errors += 1

    call_sids = [f"CA{uuid.uuid4().hex}" for _ in range(int(rate * seconds))]
    calls = [
        CallContext(
            call_sid=call_sid,
            room=f"call_{call_sid}",
            org_id="bench-org",
            agent_id="bench-agent",
            agent_version=1,
            from_number="+14155550100",
            to_number="+15550000000",
            started_at=datetime.now(UTC),
        )
        for call_sid in call_sids
    ]
    tasks = []
    start = time.perf_counter()
    try:
        for i, call in enumerate(calls):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(call)))
        async with asyncio.timeout(seconds + 30):
            await asyncio.gather(*tasks)
    finally:
        await rooms.aclose()
    return run


def stage_means_ms(metrics: str) -> dict[str, float]:
    sums = dict(
        re.findall(r'gateway_incoming_stage_seconds_sum\{stage="(\w+)"\} ([0-9.e+-]+)', metrics)
    )
    counts = dict(
        re.findall(r'gateway_incoming_stage_seconds_count\{stage="(\w+)"\} ([0-9.e+-]+)', metrics)
    )
    return {
        stage: float(sums[stage]) / float(counts[stage]) * 1000
        for stage in sums
        if float(counts.get(stage, 0)) > 0
    }


async def bind_numbers(nats_server: NatsServer) -> list[str]:
    nc = await nats.connect(**nats_server.credentials("ops"))
    js = nc.jetstream()
    await bus.ensure_buckets(js)
    agents = await js.key_value(AGENT_CONFIG_BUCKET)
    phones = await js.key_value(PHONE_NUMBERS_BUCKET)
    numbers = []
    for i in range(NUMBERS):
        agent = AgentRuntimeConfig(
            agent_id=f"bench-agent-{i}",
            org_id="bench-org",
            version=1,
            name="Bench",
            system_prompt="Be brief.",
        )
        number = f"+1555000{i:04d}"
        await agents.put(agent.agent_id, encode(agent))
        await phones.put(
            phone_number_key(number),
            encode(
                PhoneNumberEntry(
                    phone_number=number, agent_id=agent.agent_id, org_id="bench-org", version=1
                )
            ),
        )
        numbers.append(number)
    await nc.close()
    return numbers


async def wait_ready(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]
) -> None:
    async with asyncio.timeout(60):
        while True:
            if process.poll() is not None:
                raise RuntimeError("the gateway process exited during start-up")
            try:
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def bench(seconds: float) -> None:
    passwords = {user: "p" + secrets.token_hex(16) for user in NATS_USERS}
    with NatsServer(passwords=passwords) as nats_server, LiveKitServer() as livekit:
        numbers = await bind_numbers(nats_server)
        port = free_port()
        env = {
            **os.environ,
            **nats_server.environment(),
            "VA_GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "VA_GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "VA_GATEWAY_LIVEKIT_URL": livekit.url,
            "VA_GATEWAY_LIVEKIT_API_KEY": livekit.api_key,
            "VA_GATEWAY_LIVEKIT_API_SECRET": livekit.api_secret,
            "VA_GATEWAY_LIVEKIT_SIP_HOST": "127.0.0.1:5060",
            "VA_GATEWAY_SIP_USERNAME": "bench",
            "VA_GATEWAY_SIP_PASSWORD": secrets.token_hex(12),
            "VA_GATEWAY_GRANT_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "VA_GATEWAY_GRANT_KEY_ID": "bench",
            "VA_GATEWAY_HOST": "127.0.0.1",
            "VA_GATEWAY_PORT": str(port),
            "VA_GATEWAY_LOG_LEVEL": "warning",
        }
        log_path = Path(tempfile.gettempdir()) / "bench-gateway.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock runs
                [sys.executable, "-m", "voiceagents.gateway", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        print(f"gateway process log: {log_path}")
        url = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=512)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                await wait_ready(session, url, process)
                # Warm-up: connections, LiveKit client, code paths.
                await load(session, url, 20, 2, forged=False, numbers=numbers)
                at50 = await load(session, url, 50, seconds, forged=False, numbers=numbers)
                async with session.get(url + "/metrics") as response:
                    before = stage_means_ms(await response.text())
                load_avg = os.getloadavg()[0]
                cpu_before = cpu_seconds(process.pid)
                at200 = await load(session, url, 200, seconds, forged=False, numbers=numbers)
                cpu_200 = cpu_seconds(process.pid) - cpu_before
                async with session.get(url + "/metrics") as response:
                    stages = stage_means_ms(await response.text())
                cpu_before = cpu_seconds(process.pid)
                floor = await load(session, url, 200, seconds, forged=True, numbers=numbers)
                cpu_floor = cpu_seconds(process.pid) - cpu_before
        finally:
            process.terminate()
            process.wait(20)
        livekit_only = await livekit_alone(livekit, 200, seconds)
    del before
    figures = {
        "webhook_p50_ms_50cps": percentile(at50.latencies_ms, 50),
        "webhook_p99_ms_50cps": percentile(at50.latencies_ms, 99),
        "webhook_p50_ms_200cps": percentile(at200.latencies_ms, 50),
        "webhook_p99_ms_200cps": percentile(at200.latencies_ms, 99),
        "webhook_max_ms_200cps": max(at200.latencies_ms),
        "webhook_errors": float(at50.errors + at200.errors),
        "livekit_only_p50_ms_200cps": percentile(livekit_only.latencies_ms, 50),
        "livekit_only_p99_ms_200cps": percentile(livekit_only.latencies_ms, 99),
        "livekit_only_errors": float(livekit_only.errors),
        "signature_only_p99_ms": percentile(floor.latencies_ms, 99),
        "signature_only_p50_ms": percentile(floor.latencies_ms, 50),
        # Incoming webhook + its status callback + the LiveKit and NATS requests they make.
        "gateway_cpu_ms_per_call_200cps": cpu_200 * 1000 / len(at200.latencies_ms),
        "signature_only_cpu_ms_per_request": cpu_floor * 1000 / len(floor.latencies_ms),
        "load_avg_1m_at_200cps": load_avg,
    }
    for stage in ("signature", "lookup", "grant", "livekit", "twiml"):
        if stage in stages:
            figures[f"stage_{stage}_mean_ms"] = stages[stage]
    write_results(
        "gateway",
        figures,
        {
            "webhook_p99_ms_200cps": "<= 15",
            "webhook_errors": "0",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each load step")
    args = parser.parse_args()
    asyncio.run(bench(args.seconds))


if __name__ == "__main__":
    main()
