"""Calls through the worker for the built-in tool tests: the call is prepared by the worker
(config from memory, credentials released by a tool-vault stand-in over a real NATS, tool list
built and wrapped), and the offline model follows a script in text mode."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice.run_result import RunResult
from nacl.public import PublicKey, SealedBox
from nats.aio.client import Client

from voiceagents.contracts.agents import AgentRuntimeConfig
from voiceagents.contracts.calls import CallContext, CallEvent, DispatchMetadata
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.toolvault import (
    CredentialReleaseReply,
    CredentialReleaseRequest,
    ReleasedCredentials,
    ToolCredentials,
)
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
from voiceagents.worker.tools.discovery import discover


@dataclass
class ReleasingToolVault:
    """Answers `toolvault.v1.release` (as NATS user `toolvault`) with the credentials stored for
    each agent tool id, sealed to the worker's key as tool-vault does."""

    credentials: dict[str, ToolCredentials] = field(default_factory=dict)

    async def handle(self, msg: Any) -> None:
        request = decode(msg.data, CredentialReleaseRequest)
        released = ReleasedCredentials(
            credentials=[
                self.credentials[tool_id]
                for tool_id in request.agent_tool_ids
                if tool_id in self.credentials
            ]
        )
        box = SealedBox(PublicKey(base64.b64decode(request.worker_public_key)))
        sealed = base64.b64encode(box.encrypt(encode(released))).decode()
        await msg.respond(encode(CredentialReleaseReply(sealed_credentials=sealed)))


@dataclass
class ScriptedCall:
    state: CallState
    session: AgentSession[CallState]
    events: list[CallEvent]

    async def say(self, words: str) -> list[str]:
        """What the agent answers the caller's `words`."""
        result: RunResult[None] = await self.session.run(user_input=words)
        return [
            e.item.text_content or ""
            for e in result.events
            if e.type == "message" and e.item.role == "assistant"
        ]


async def open_call(
    config: AgentRuntimeConfig,
    script: OfflineScript,
    nc: Client,
    *,
    from_number: str = "+14155550123",
    settings: Settings | None = None,
) -> ScriptedCall:
    """A call from `from_number` to the agent, prepared and started as the worker does."""
    mirror = ConfigMirror()
    mirror.apply_agent(config)
    runtime = WorkerRuntime(
        settings=settings or Settings(dev_mode=True, model="offline"),
        mirror=mirror,
        tool_classes=discover(),
        phrases=PhraseAudio(OfflineVoice(), None),
        scripts=ScriptBook(),
    )
    sid = f"CA{uuid.uuid4().hex}"
    call = CallContext(
        call_sid=sid,
        room=f"call_{sid}",
        org_id=config.org_id,
        agent_id=config.agent_id,
        agent_version=config.version,
        from_number=from_number,
        to_number="+14155550100",
        started_at=datetime.now(UTC),
    )
    events: list[CallEvent] = []
    state = await prepare_call(
        runtime,
        DispatchMetadata(call=call, grant="grant-" + sid),
        nc=nc,
        js=None,
        started=0.0,
        events=CallEvents(None, call, on_published=events.append),
    )
    session = new_session(OfflineRealtimeModel(script=script, realtime=False), state)
    await session.start(new_agent(state))
    return ScriptedCall(state=state, session=session, events=events)
