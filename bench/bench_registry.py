"""Registry: read throughput of the admin API, write-to-KV propagation, and mirror lookups.

1. `GET /api/v1/agents/{id}` against one registry (`python -m voiceagents.registry serve`:
   Granian with one worker process on uvloop) at concurrency 32 for 20 s (closed loop:
   bombardier's 32 connections, each sending its next request when the previous one is
   answered). Logs at warning: at info the JSON access-log line costs about a quarter of
   the throughput.
2. Propagation: `PUT` an agent, then wait until a `ConfigMirror` in *this* process (another
   process than the registry) holds the new version: commit -> NOTIFY -> relay -> JetStream
   publish -> KV update -> KV watch. p50/p99 over 1,000 sequential updates.
3. Mirror lookup: `ConfigMirror.route(e164)` (number -> entry and agent config) with 10,000
   numbers in memory; mean time per lookup.

Run: `make bench-registry` (or `.venv/bin/python bench/bench_registry.py [--seconds 20]`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import cpu_seconds, percentile, write_results
from voiceagents.contracts.agents import AgentRuntimeConfig, PhoneNumberEntry
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.devstack.servers import NatsServer, PostgresServer, free_port
from voiceagents.gateway.grants import generate_key_pair
from voiceagents.registry import db
from voiceagents.registry.auth import issue_key

BOMBARDIER = Path(__file__).resolve().parent.parent / ".local" / "bin" / "bombardier"
CONCURRENCY = 32
UPDATES = 1000
LOOKUP_NUMBERS = 10_000
LOOKUPS = 1_000_000


async def admin_key(dsn: str) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        issued = await issue_key(
            connection, role="platform_admin", organization_id=None, name="bench"
        )
    finally:
        await connection.close()
    return issued.key


async def wait_ready(base_url: str, process: asyncio.subprocess.Process) -> None:
    """Until the registry process at `base_url` answers /readyz (it exited: an error)."""
    async with aiohttp.ClientSession() as session:
        while process.returncode is None:
            try:
                async with session.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"registry exited with {process.returncode}")


async def _get_throughput(
    base_url: str, headers: dict[str, str], agent_id: str, seconds: float, registry_pid: int
) -> tuple[float, float, float, float, int]:
    """(req/s, registry CPU ms per request, p50 ms, p99 ms, errors) from bombardier:
    CONCURRENCY connections, closed loop. One process serves on one core, so its CPU per
    request sets its ceiling on req/s.

    A Go load generator, because the machine's two cores are shared: an aiohttp client in
    Python spent about as much CPU per request as the registry itself and its own event loop
    showed up in the latencies."""
    if not BOMBARDIER.exists():
        raise RuntimeError(f"{BOMBARDIER} is missing: run `make bench-install`")
    command = [str(BOMBARDIER), "-c", str(CONCURRENCY), "-l", "-o", "json", "-p", "r"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    url = f"{base_url}/api/v1/agents/{agent_id}"
    warm_up = await asyncio.create_subprocess_exec(
        *command, "-d", "2s", url, stdout=asyncio.subprocess.DEVNULL
    )
    await warm_up.wait()
    cpu_before = cpu_seconds(registry_pid)
    run = await asyncio.create_subprocess_exec(
        *command, "-d", f"{seconds:g}s", url, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await run.communicate()
    cpu = cpu_seconds(registry_pid) - cpu_before
    if run.returncode != 0:
        raise RuntimeError(f"bombardier failed ({run.returncode})")
    result = json.loads(output)["result"]
    latency_us = result["latency"]["percentiles"]
    errors = sum(result[k] for k in ("req1xx", "req3xx", "req4xx", "req5xx", "others"))
    return (
        result["req2xx"] / result["timeTakenSeconds"],
        cpu * 1000 / result["req2xx"],
        latency_us["50"] / 1000,
        latency_us["99"] / 1000,
        errors,
    )


async def _propagation(
    base_url: str, headers: dict[str, str], agent_id: str, nats_server: NatsServer
) -> list[float]:
    nc = await nats.connect(**nats_server.credentials("ops"))
    mirror = ConfigMirror()
    await mirror.start(nc.jetstream())
    changed = asyncio.Event()
    mirror.on_change(lambda _bucket, _key: changed.set())
    samples: list[float] = []
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            for i in range(UPDATES):
                started = time.perf_counter()
                async with session.put(
                    f"{base_url}/api/v1/agents/{agent_id}", json={"description": f"update {i}"}
                ) as response:
                    body = await response.json()
                    assert response.status == 200, body
                version = body["version"]
                while (seen := mirror.agent(agent_id)) is None or seen.version < version:
                    changed.clear()
                    await changed.wait()
                samples.append(time.perf_counter() - started)
    finally:
        await mirror.stop()
        await nc.close()
    return samples


def _mirror_lookup_us() -> float:
    mirror = ConfigMirror()
    numbers = [f"+1555{n:07d}" for n in range(LOOKUP_NUMBERS)]
    for n, number in enumerate(numbers):
        agent_id = f"agent-{n}"
        mirror.apply_agent(
            AgentRuntimeConfig(
                agent_id=agent_id, org_id="org", version=1, name="a", system_prompt="-"
            )
        )
        mirror.apply_number(
            PhoneNumberEntry(phone_number=number, agent_id=agent_id, org_id="org", version=1)
        )
    probes = [numbers[(i * 7919) % LOOKUP_NUMBERS] for i in range(LOOKUPS)]
    route = mirror.route
    started = time.perf_counter()
    for number in probes:
        route(number)
    return (time.perf_counter() - started) / LOOKUPS * 1e6


async def main(seconds: float) -> None:
    with PostgresServer() as postgres, NatsServer() as nats_server:
        dsn = postgres.dsn()
        await asyncio.to_thread(db.migrate, dsn)
        key = await admin_key(dsn)
        port = free_port()
        env = {
            **os.environ,
            **nats_server.environment(),
            "VA_REGISTRY_DSN": dsn,
            "VA_REGISTRY_HOST": "127.0.0.1",
            "VA_REGISTRY_PORT": str(port),
            "VA_REGISTRY_LOG_LEVEL": "warning",
            # Required by `serve` (knowledge-base searches); nothing here uses them.
            "VA_REGISTRY_GRANT_PUBLIC_KEYS": generate_key_pair("bench")[
                "VA_REGISTRY_GRANT_PUBLIC_KEYS"
            ],
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voiceagents.registry", "serve", env=env
        )
        base_url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        try:
            await wait_ready(base_url, process)
            async with aiohttp.ClientSession(headers=headers) as session:
                async with session.post(
                    f"{base_url}/api/v1/organizations", json={"name": "Bench"}
                ) as response:
                    org_id = (await response.json())["id"]
                async with session.post(
                    f"{base_url}/api/v1/agents",
                    json={
                        "organization_id": org_id,
                        "name": "Front desk",
                        "system_prompt": "You answer the phone for Acme. " * 40,
                        "phone_number": "+14155550100",
                    },
                ) as response:
                    agent_id = (await response.json())["id"]
            rps, cpu_ms_per_get, p50_ms, p99_ms, errors = await _get_throughput(
                base_url, headers, agent_id, seconds, process.pid
            )
            if errors:
                raise RuntimeError(f"{errors} GET requests failed")
            propagation = await _propagation(base_url, headers, agent_id, nats_server)
        finally:
            process.terminate()
            await process.wait()
    lookup_us = _mirror_lookup_us()
    write_results(
        "registry",
        {
            "get_agent_rps": rps,
            "get_agent_cpu_ms": cpu_ms_per_get,
            "get_agent_p50_ms": p50_ms,
            "get_agent_p99_ms": p99_ms,
            "propagation_p50_ms": percentile(propagation, 50) * 1000,
            "propagation_p99_ms": percentile(propagation, 99) * 1000,
            "mirror_lookup_us": lookup_us,
        },
        {
            "get_agent_rps": ">= 3000",
            "get_agent_p99_ms": "<= 10",
            "propagation_p99_ms": "<= 50",
            "mirror_lookup_us": "<= 10",
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="GET load duration")
    asyncio.run(main(parser.parse_args().seconds))
