"""System tools: every call can end itself and hand the caller to a person, also when the agent
binds no tool at all. They act with the worker's own Twilio account (its settings), which an
agent's config cannot send anywhere else; without one, the agent says it cannot transfer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, CallEvent, DispatchMetadata, ToolInvoked
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.worker.call import CallState, WorkerRuntime, new_agent, new_session, prepare_call
from voiceagents.worker.events import CallEvents
from voiceagents.worker.offline_model import (
    CANNOT_DO_SENTENCE,
    OfflineRealtimeModel,
    OfflineScript,
    OfflineVoice,
    ScriptBook,
    ScriptToolCall,
    ScriptTurn,
)
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import PhraseAudio
from voiceagents.worker.standins.twilio_calls import TwilioStandIn
from voiceagents.worker.tools.builtin.call_control import CallControl
from voiceagents.worker.tools.discovery import catalog, discover, function_specs
from voiceagents.worker.tools.system import system_bindings, with_system_tools

pytestmark = pytest.mark.unit

ACCOUNT_SID = "AC" + "2" * 32
AUTH_TOKEN = "e" * 32
TRANSFER_NUMBER = "+14155550177"

SCRIPT = OfflineScript(
    turns=[
        ScriptTurn(
            when="person",
            tool_calls=[
                ScriptToolCall(name="transfer_to_human", arguments={"reason": "billing question"})
            ],
            after_tools="Connecting you now.",
        ),
        ScriptTurn(
            when="bye",
            tool_calls=[ScriptToolCall(name="end_call", arguments={"reason": "caller is done"})],
            after_tools="Goodbye!",
        ),
    ]
)


def agent_with(tools: list[ToolBinding]) -> AgentRuntimeConfig:
    return AgentRuntimeConfig(
        agent_id=f"agent-{uuid.uuid4().hex[:8]}",
        org_id="org-1",
        version=1,
        name="Sam",
        system_prompt="You answer the salon's phone.",
        transfer_number=TRANSFER_NUMBER,
        tools=tools,
    )


@dataclass
class Call:
    state: CallState
    session: Any
    model: OfflineRealtimeModel
    events: list[CallEvent]

    async def say(self, words: str) -> list[str]:
        result = await self.session.run(user_input=words)
        return [
            e.item.text_content
            for e in result.events
            if e.type == "message" and e.item.role == "assistant"
        ]


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandIn]:
    async with TwilioStandIn(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as stand_in:
        yield stand_in


@pytest.fixture
async def start_call() -> AsyncIterator[Any]:
    sessions: list[Any] = []

    async def start(settings: Settings, tools: list[ToolBinding] | None = None) -> Call:
        config = agent_with(tools or [])
        mirror = ConfigMirror()
        mirror.apply_agent(config)
        runtime = WorkerRuntime(
            settings=settings,
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
            from_number="+14155550123",
            to_number="+14155550100",
            started_at=datetime.now(UTC),
        )
        events: list[CallEvent] = []
        state = await prepare_call(
            runtime,
            DispatchMetadata(call=call, grant="grant"),
            nc=None,
            js=None,
            started=0.0,
            events=CallEvents(None, call, on_published=events.append),
        )
        model = OfflineRealtimeModel(script=SCRIPT, realtime=False)
        session = new_session(model, state)
        sessions.append(session)
        await session.start(new_agent(state))
        return Call(state=state, session=session, model=model, events=events)

    yield start
    for session in sessions:
        await session.aclose()


async def test_an_agent_without_tools_transfers_with_the_workers_twilio_account(
    start_call: Any, twilio: TwilioStandIn
) -> None:
    settings = Settings(
        dev_mode=True,
        model="offline",
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_base_url=twilio.base_url,
    )
    call = await start_call(settings)
    live = twilio.add_call(call.state.call.call_sid)

    assert sorted(call.model.sessions[0].tools.function_tools) == ["end_call", "transfer_to_human"]
    assert await call.say("Can I talk to a person?") == ["Connecting you now."]
    async with asyncio.timeout(30):
        while not live.updates:  # noqa: ASYNC110 - the stand-in records, nothing to await
            await asyncio.sleep(0.02)

    # The stand-in accepts only the worker's account SID and auth token (HTTP Basic).
    [update] = live.updates
    assert f"<Dial>{TRANSFER_NUMBER}</Dial>" in update["Twiml"]


async def test_without_twilio_credentials_the_agent_says_it_cannot_transfer(
    start_call: Any,
) -> None:
    call = await start_call(Settings(dev_mode=True, model="offline"))

    assert sorted(call.model.sessions[0].tools.function_tools) == ["end_call"]
    assert await call.say("Can I talk to a person?") == [CANNOT_DO_SENTENCE]


async def test_without_twilio_credentials_an_agent_binding_call_control_cannot_transfer(
    start_call: Any,
) -> None:
    # The agent binds the system tool itself, to configure its routing.
    bound = ToolBinding(
        agent_tool_id="at-control",
        tool_name="call_control",
        config={
            "routing": {
                "departments": {"sales": {"number": "+14155550201"}},
                "fallback_department": "sales",
            }
        },
        functions=function_specs(CallControl),
    )
    call = await start_call(Settings(dev_mode=True, model="offline"), [bound])

    assert sorted(call.model.sessions[0].tools.function_tools) == ["end_call"]
    assert await call.say("Can I talk to a person?") == [CANNOT_DO_SENTENCE]


async def test_end_call_marks_the_call_as_ended_by_the_agent(start_call: Any) -> None:
    call = await start_call(Settings(dev_mode=True, model="offline"))

    assert call.state.ended_by_agent is None
    await call.say("Thanks, bye!")

    assert call.state.ended_by_agent == "caller is done"
    [invoked] = [e for e in call.events if isinstance(e, ToolInvoked)]
    assert (invoked.tool_name, invoked.function, invoked.outcome) == (
        "call_control",
        "end_call",
        "ok",
    )


def test_an_agents_config_cannot_send_the_workers_twilio_credentials_elsewhere() -> None:
    settings = Settings(
        model="offline",
        nats_password="p" * 24,
        livekit_api_secret="s" * 32,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
    )
    system = system_bindings(discover())
    # The agent binds call_control itself (to configure it) and tries to aim it elsewhere.
    bound = ToolBinding(
        agent_tool_id="at-control",
        tool_name="call_control",
        config={"twilio_api_base_url": "https://attacker.example", "greeting": "kept"},
        functions=system[0].functions,
    )

    [binding], credentials = with_system_tools([bound], system, settings)

    assert binding.config == {
        "twilio_api_base_url": "https://api.twilio.com",
        "greeting": "kept",
    }
    assert credentials["at-control"].secrets == {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
    }


def test_the_catalog_marks_the_system_tools() -> None:
    tools = {spec.name: spec for spec in catalog(discover())}

    assert tools["call_control"].system is True
    assert not [name for name, spec in tools.items() if spec.system and name != "call_control"]
