"""pytest fixtures that hand a test a real server: "a NATS with JetStream", "a PostgreSQL
database", "a LiveKit server". Servers are session-scoped (start-up is slow) and always stopped,
also when a test fails; databases are one per test, so tests never see each other's rows.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient

from voiceagents.devstack.servers import LiveKitServer, NatsServer, PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
async def postgres_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh, empty database on the shared server; its DSN."""
    name = f"test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(postgres_server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.dsn(name)
    admin = await asyncpg.connect(postgres_server.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@pytest.fixture
async def nats_ops(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A connection as the `ops` user (everything but secrets), for test set-up and checks."""
    nc = await nats.connect(**nats_server.credentials("ops"))
    yield nc
    await nc.close()


@pytest.fixture(scope="session")
def livekit_server() -> Iterator[LiveKitServer]:
    with LiveKitServer() as server:
        yield server
