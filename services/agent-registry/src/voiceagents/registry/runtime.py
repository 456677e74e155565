"""What a running registry holds, shared by its HTTP handlers and its NATS workers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from litestar import Request
from nats.aio.client import Client as NatsClient

from voiceagents.registry.auth import KeyVerifier
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.readcache import AgentCache
from voiceagents.registry.relay import OutboxRelay
from voiceagents.registry.settings import Settings


@dataclass
class Registry:
    settings: Settings
    pool: asyncpg.Pool[Any]
    keys: KeyVerifier
    agents: AgentCache
    metrics: RegistryMetrics
    # Set once NATS is reached (the API serves, and writes commit, before that).
    nats: NatsClient | None = None
    relay: OutboxRelay | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def registry_of(request: Request[Any, Any, Any]) -> Registry:
    registry: Registry = request.app.state.registry
    return registry
