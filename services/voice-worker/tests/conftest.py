"""Fixtures of the voice worker's tests: small test tools, an agent config, a call, and a
text-mode call running on the offline (stand-in) model."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from livekit.agents import AgentSession, RunContext
from nacl.public import PublicKey, SealedBox
from nats.aio.client import Client

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, CallEvent, DispatchMetadata
from voiceagents.contracts.codec import decode, encode
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
from voiceagents.devstack.servers import NatsServer
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
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function

PLANTED_SECRET = "sk_live_PLANTED_" + uuid.uuid4().hex


class Orders(BaseTool):
    """A test tool with an API key, an optional parameter, a read and a write."""

    metadata = ToolMetadata(name="orders", description="Order lookup", auth_type="api_key")

    @tool_function(idempotent=True)
    async def lookup_order(
        self,
        context: RunContext[Any],
        order_id: str,
        include_items: bool = False,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Look up an order by the number the caller reads out.

        Args:
            order_id: The order number.
            include_items: Whether to list the items too.
        """
        key = self.credentials.secrets["api_key"] if self.credentials else None
        return {"order_id": order_id, "status": "shipped", "authorized": key == PLANTED_SECRET}

    @tool_function(redact_arguments=["card_number"])
    async def refund_order(self, context: RunContext[Any], order_id: str, card_number: str) -> str:
        """Refund an order to a card."""
        return f"refund of {order_id} started"

    async def cancel_order(self, context: RunContext[Any], order_id: str) -> str:
        """Cancel an order."""
        return "cancelled"


class Flaky(BaseTool):
    """A test tool that misbehaves on purpose."""

    metadata = ToolMetadata(name="flaky", description="Misbehaves", timeout_seconds=0.2)
    calls: dict[str, int] = {}

    @tool_function(idempotent=True)
    async def slow_read(self, context: RunContext[Any]) -> str:
        """Never answers in time."""
        Flaky.calls["slow_read"] = Flaky.calls.get("slow_read", 0) + 1
        await asyncio.sleep(30)
        return "late"

    async def broken_write(self, context: RunContext[Any]) -> str:
        """Raises."""
        Flaky.calls["broken_write"] = Flaky.calls.get("broken_write", 0) + 1
        raise RuntimeError(f"upstream said no, key={PLANTED_SECRET}")

    async def slow_but_fine(self, context: RunContext[Any]) -> str:
        """Answers after a pause longer than the filler delay."""
        await asyncio.sleep(0.15)
        return "done"


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


def runtime_for(config: AgentRuntimeConfig, **settings: Any) -> WorkerRuntime:
    mirror = ConfigMirror()
    mirror.apply_agent(config)
    return WorkerRuntime(
        settings=Settings(dev_mode=True, model="offline", **settings),
        mirror=mirror,
        tool_classes=TOOL_CLASSES,
        phrases=PhraseAudio(OfflineVoice(), None),
        scripts=ScriptBook(),
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
        **settings: Any,
    ) -> TextCall:
        config = config or agent_config()
        runtime = runtime_for(config, **settings)
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
