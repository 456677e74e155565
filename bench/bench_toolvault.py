"""Credential release round trip against one tool-vault *process*
(`python -m voiceagents.toolvault serve`), with real NATS and PostgreSQL on loopback, and the
Vault API test stand-in (services/tool-vault/tests/vault_standin.py) as its own process.

A voice worker's whole round trip is timed: new X25519 key pair, request on
`toolvault.v1.release` (as NATS user `worker`), tool-vault verifies the Ed25519 grant, checks the
bindings in its KV mirror, reads two API-key tools' secrets from the backend, seals the reply;
the worker opens the sealed box. Open-loop load (requests leave on
schedule whether or not earlier ones were answered) at 500 req/s for 20 s, once per backend.
An error is any reply with an error or a tool error, a timeout, or a box that does not open.
First the floor: the same rate of release-sized requests from the same client to a responder
process that only echoes them (`nats_echo_*`), what NATS and nats-py cost on this machine before
tool-vault does anything.

Run: `make bench-toolvault` (or `.venv/bin/python bench/bench_toolvault.py [--seconds 20]`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import NamedTuple

import jwt
import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.public import PrivateKey, SealedBox
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import cpu_seconds, percentile, write_results  # noqa: E402
from voiceagents.contracts import bus  # noqa: E402
from voiceagents.contracts.agents import (  # noqa: E402
    AGENT_CONFIG_BUCKET,
    AgentRuntimeConfig,
    ToolBinding,
)
from voiceagents.contracts.codec import decode, encode  # noqa: E402
from voiceagents.contracts.toolvault import (  # noqa: E402
    RELEASE_SUBJECT,
    SECRETS_PUT_SUBJECT,
    CredentialReleaseReply,
    CredentialReleaseRequest,
    ReleasedCredentials,
    SecretsPutReply,
    SecretsPutRequest,
)
from voiceagents.devstack.servers import NatsServer, PostgresServer, free_port  # noqa: E402

VAULT_STANDIN = ROOT / "services/tool-vault/tests/vault_standin.py"
RATE = 500
AGENTS = 50
KEY_ID = "bench-gateway-1"
SIGNING_KEY = Ed25519PrivateKey.generate()


def grant(agent: AgentRuntimeConfig) -> str:
    now = int(time.time())
    sid = "CA" + uuid.uuid4().hex
    claims = {
        "aud": "tool-vault",
        "iss": "gateway",
        "room": f"call_{sid}",
        "call_sid": sid,
        "org_id": agent.org_id,
        "agent_id": agent.agent_id,
        "iat": now,
        "exp": now + 3600,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, SIGNING_KEY, algorithm="EdDSA", headers={"kid": KEY_ID})


def environment(nats_server: NatsServer, port: int, **backend: str) -> dict[str, str]:
    public = SIGNING_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    env = {
        **os.environ,
        **nats_server.environment(),
        "VA_TOOLVAULT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "VA_TOOLVAULT_GRANT_PUBLIC_KEYS": json.dumps({KEY_ID: base64.b64encode(public).decode()}),
        "VA_TOOLVAULT_PORT": str(port),
        "VA_TOOLVAULT_HOST": "127.0.0.1",
        "VA_TOOLVAULT_INSTANCE_ID": f"bench-{uuid.uuid4().hex[:6]}",
        "VA_TOOLVAULT_LOG_LEVEL": "warning",
    }
    env.update({f"VA_TOOLVAULT_{k.upper()}": v for k, v in backend.items()})
    return env


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tool-vault exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"tool-vault not ready: {log.read_text()[-2000:]}")


async def seed(nats_server: NatsServer) -> list[AgentRuntimeConfig]:
    ops = await nats.connect(**nats_server.credentials("ops"))
    js = ops.jetstream()
    await bus.ensure_buckets(js)
    kv = await js.key_value(AGENT_CONFIG_BUCKET)
    agents = []
    for _ in range(AGENTS):
        agent = AgentRuntimeConfig(
            agent_id=f"agent-{uuid.uuid4().hex[:10]}",
            org_id=f"org-{uuid.uuid4().hex[:8]}",
            version=1,
            name="Bench",
            system_prompt="Be quick.",
            tools=[
                ToolBinding(
                    agent_tool_id=f"at-{uuid.uuid4().hex[:10]}",
                    tool_name="crm",
                    auth_type="api_key",
                ),
                ToolBinding(
                    agent_tool_id=f"at-{uuid.uuid4().hex[:10]}",
                    tool_name="shop",
                    auth_type="api_key",
                ),
            ],
        )
        await kv.put(agent.agent_id, encode(agent))
        agents.append(agent)
    await ops.close()
    return agents


async def store_secrets(nats_server: NatsServer, agents: list[AgentRuntimeConfig]) -> None:
    registry = await nats.connect(**nats_server.credentials("registry"))
    for agent in agents:
        for tool in agent.tools:
            request = SecretsPutRequest(
                org_id=agent.org_id,
                agent_id=agent.agent_id,
                agent_tool_id=tool.agent_tool_id,
                tool_name=tool.tool_name,
                secrets={"api_key": secrets.token_urlsafe(32)},
            )
            reply = decode(
                (await registry.request(SECRETS_PUT_SUBJECT, encode(request), timeout=10)).data,
                SecretsPutReply,
            )
            if reply.error:
                raise RuntimeError(reply.error)
    await registry.close()


async def release(nc: NatsClient, grant_token: str, tool_ids: list[str]) -> bool:
    key = PrivateKey.generate()
    request = CredentialReleaseRequest(
        grant=grant_token,
        worker_public_key=base64.b64encode(bytes(key.public_key)).decode(),
        agent_tool_ids=tool_ids,
    )
    message = await nc.request(RELEASE_SUBJECT, encode(request), timeout=5)
    reply = decode(message.data, CredentialReleaseReply)
    if reply.error or reply.tool_errors or not reply.sealed_credentials:
        return False
    opened = SealedBox(key).decrypt(base64.b64decode(reply.sealed_credentials))
    return len(decode(opened, ReleasedCredentials).credentials) == len(tool_ids)


class Run(NamedTuple):
    latencies_ms: list[float]
    errors: int
    server_cpu_ms_per_release: float
    client_cpu_ms_per_release: float


async def load(
    nats_server: NatsServer,
    agents: list[AgentRuntimeConfig],
    seconds: float,
    rate: int,
    server_pid: int,
) -> Run:
    nc = await nats.connect(**nats_server.credentials("worker"))
    work = [(grant(a), [t.agent_tool_id for t in a.tools]) for a in agents]
    # Warm up until every agent's tools release (the mirror and pools are filled).
    for token, ids in work:
        for _ in range(100):
            if await release(nc, token, ids):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("tool-vault never released the seeded credentials")
    latencies: list[float] = []
    errors = 0

    async def one(index: int) -> None:
        nonlocal errors
        token, ids = work[index % len(work)]
        started = time.perf_counter()
        try:
            ok = await release(nc, token, ids)
        except Exception:  # a timeout or a broken reply is an error, not a crash
            ok = False
        latencies.append((time.perf_counter() - started) * 1000)
        errors += not ok

    server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
    total = await open_loop(rate, seconds, one)
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    await nc.close()
    return Run(latencies, errors, server_cpu * 1000 / total, client_cpu * 1000 / total)


async def open_loop(
    rate: int, seconds: float, one: Callable[[int], Coroutine[None, None, None]]
) -> int:
    """Start `one(i)` on schedule, `rate` a second for `seconds`, whether or not earlier ones
    were answered; wait for all. Returns how many were started."""
    total = int(rate * seconds)
    tasks = []
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return total


def serve_echo(credentials: dict[str, str], ready: EventType) -> None:
    """The floor's responder, in its own process as tool-vault is: it answers each request on
    the release subject with the request's own bytes and does nothing else."""

    async def serve() -> None:
        nc = await nats.connect(**credentials)

        async def answer(message: Msg) -> None:
            await message.respond(message.data)

        await nc.subscribe(RELEASE_SUBJECT, queue="toolvault", cb=answer)
        await nc.flush()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


async def nats_floor(nats_server: NatsServer, seconds: float, rate: int) -> list[float]:
    """Round trips of a release-sized request, at the same rate, to a responder that only
    echoes it: what NATS and the Python client cost before tool-vault does anything."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    responder = context.Process(
        target=serve_echo, args=(nats_server.credentials("toolvault"), ready), daemon=True
    )
    responder.start()
    try:
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("the echo responder did not start")
        agent = AgentRuntimeConfig(
            agent_id=str(uuid.uuid4()),
            org_id=str(uuid.uuid4()),
            version=1,
            name="a",
            system_prompt="-",
        )
        payload = encode(
            CredentialReleaseRequest(
                grant=grant(agent),
                worker_public_key=base64.b64encode(
                    bytes(PrivateKey.generate().public_key)
                ).decode(),
                agent_tool_ids=[str(uuid.uuid4()), str(uuid.uuid4())],
            )
        )
        nc = await nats.connect(**nats_server.credentials("worker"))
        for _ in range(200):  # warm-up
            await nc.request(RELEASE_SUBJECT, payload, timeout=5)
        latencies: list[float] = []

        async def one(_: int) -> None:
            started = time.perf_counter()
            await nc.request(RELEASE_SUBJECT, payload, timeout=5)
            latencies.append((time.perf_counter() - started) * 1000)

        await open_loop(rate, seconds, one)
        await nc.close()
        return latencies
    finally:
        responder.terminate()
        responder.join(10)


def run_backend(
    nats_server: NatsServer, seconds: float, rate: int, backend: dict[str, str], log: Path
) -> Run:
    port = free_port()
    env = environment(nats_server, port, **backend)
    python = sys.executable
    if backend["backend"] == "embedded":
        subprocess.run(
            [python, "-m", "voiceagents.toolvault", "migrate"],
            env=env,
            check=True,
            capture_output=True,
        )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [python, "-m", "voiceagents.toolvault", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(port, process, log)

        async def run() -> Run:
            agents = await seed(nats_server)
            await store_secrets(nats_server, agents)
            return await load(nats_server, agents, seconds, rate, process.pid)

        return asyncio.run(run())
    finally:
        process.terminate()
        process.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=RATE, help="releases per second")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-toolvault-"))
    figures: dict[str, float] = {}
    with NatsServer() as nats_server, PostgresServer() as postgres:
        master = base64.b64encode(os.urandom(32)).decode()
        embedded = {
            "backend": "embedded",
            "database_url": postgres.dsn(),
            "master_keys": json.dumps({"m1": master}),
            "master_key_id": "m1",
        }
        floor = asyncio.run(nats_floor(nats_server, args.seconds, args.rate))
        runs = {
            "embedded": run_backend(
                nats_server, args.seconds, args.rate, embedded, logs / "embedded.log"
            )
        }

        standin = subprocess.Popen(
            [sys.executable, str(VAULT_STANDIN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert standin.stdout is not None
            vault = json.loads(standin.stdout.readline())
            backend = {
                "backend": "vault",
                "vault_addr": vault["url"],
                "vault_auth": "token",
                "vault_token": vault["token"],
            }
            runs["vault"] = run_backend(
                nats_server, args.seconds, args.rate, backend, logs / "vault.log"
            )
        finally:
            assert standin.stdin is not None
            standin.stdin.close()
            standin.wait(timeout=10)
    for name, run in runs.items():
        figures[f"release_{name}_p50_ms"] = percentile(run.latencies_ms, 50)
        figures[f"release_{name}_p99_ms"] = percentile(run.latencies_ms, 99)
    figures["release_errors"] = float(sum(run.errors for run in runs.values()))
    figures["nats_echo_p50_ms"] = percentile(floor, 50)
    figures["nats_echo_p99_ms"] = percentile(floor, 99)
    for name, run in runs.items():
        # Where the machine's two cores go: tool-vault itself, and the simulated workers.
        figures[f"release_{name}_server_cpu_ms"] = run.server_cpu_ms_per_release
        figures[f"release_{name}_client_cpu_ms"] = run.client_cpu_ms_per_release
    figures["load_1m_after"] = os.getloadavg()[0]
    write_results(
        "toolvault",
        figures,
        {
            "release_embedded_p99_ms": "<= 2",
            "release_vault_p99_ms": "<= 5",
            "release_errors": "0",
        },
    )


if __name__ == "__main__":
    main()
