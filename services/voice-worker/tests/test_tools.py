"""The tools a caller's agent can use: exactly the enabled functions, with the right schemas;
results go back to the model; failures become a sentence the caller hears, never silence."""

from __future__ import annotations

import json
from typing import Any

import pytest
from livekit.agents.llm.utils import build_legacy_openai_schema

from voiceagents.contracts.calls import ToolInvoked
from voiceagents.worker.offline_model import (
    CANNOT_DO_SENTENCE,
    OfflineScript,
    ScriptToolCall,
    ScriptTurn,
)
from voiceagents.worker.tools.execution import FAILED_SENTENCE, UNAVAILABLE_SENTENCE

pytestmark = pytest.mark.unit


def turn(when: str, function: str, after: str = "{result}", **arguments: Any) -> ScriptTurn:
    return ScriptTurn(
        when=when,
        tool_calls=[ScriptToolCall(name=function, arguments=arguments)],
        after_tools=after,
    )


def spoken(result: Any) -> list[str]:
    return [
        event.item.text_content
        for event in result.events
        if event.type == "message" and event.item.role == "assistant"
    ]


async def test_the_model_receives_exactly_the_enabled_functions_with_their_schemas(
    text_call: Any,
) -> None:
    call = await text_call(OfflineScript())

    received = call.received_tools
    assert sorted(received) == [
        "broken_write",
        "lookup_order",
        "refund_order",
        "slow_but_fine",
        "slow_read",
    ]  # cancel_order is unselected for this agent
    lookup = build_legacy_openai_schema(received["lookup_order"], internally_tagged=True)
    assert lookup["description"] == "Look up an order by the number the caller reads out."
    parameters = lookup["parameters"]
    assert parameters["required"] == ["order_id"]
    assert parameters["properties"]["order_id"] == {
        "description": "The order number.",
        "title": "Order Id",
        "type": "string",
    }
    assert parameters["properties"]["include_items"]["type"] == "boolean"
    assert parameters["properties"]["include_items"]["default"] is False
    assert parameters["properties"]["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert "context" not in parameters["properties"]
    assert "self" not in parameters["properties"]


async def test_a_scripted_tool_call_runs_and_its_result_goes_back_to_the_model(
    text_call: Any, make_config: Any
) -> None:
    script = OfflineScript(
        turns=[turn("order", "lookup_order", "Your order is {result}", order_id="A-42")]
    )
    call = await text_call(script, make_config(orders_auth="none"))

    result = await call.session.run(user_input="Where is my order A-42?")

    outputs = [e.item for e in result.events if e.type == "function_call_output"]
    assert len(outputs) == 1
    assert json.loads(outputs[0].output)["status"] == "shipped"
    model_context = call.model.sessions[0].chat_ctx.items
    assert any(getattr(item, "output", None) == outputs[0].output for item in model_context)
    assert spoken(result) == [f"Your order is {outputs[0].output}"]


async def test_a_tool_that_times_out_gets_a_caller_safe_sentence_and_the_call_goes_on(
    text_call: Any, tool_calls: dict[str, int], make_config: Any
) -> None:
    script = OfflineScript(
        turns=[
            turn("check", "slow_read"),
            turn("order", "lookup_order", "Your order is {result}", order_id="7"),
        ]
    )
    call = await text_call(script, make_config(orders_auth="none"))

    first = await call.session.run(user_input="Can you check that?")
    second = await call.session.run(user_input="And my order 7?")

    assert spoken(first) == [FAILED_SENTENCE]
    assert tool_calls["slow_read"] == 2  # a read is retried once
    assert spoken(second)[0].startswith("Your order is")
    outcomes = [(e.function, e.outcome) for e in call.published if isinstance(e, ToolInvoked)]
    assert outcomes == [("slow_read", "timeout"), ("lookup_order", "ok")]


async def test_a_tool_that_raises_gets_a_caller_safe_sentence_and_is_not_retried(
    text_call: Any, tool_calls: dict[str, int], planted_secret: str
) -> None:
    call = await text_call(OfflineScript(turns=[turn("change", "broken_write")]))

    result = await call.session.run(user_input="Please change it")

    assert spoken(result) == [FAILED_SENTENCE]
    assert tool_calls["broken_write"] == 1  # a write is never run twice
    (event,) = [e for e in call.published if isinstance(e, ToolInvoked)]
    assert (event.outcome, event.error) == ("error", "RuntimeError")
    assert planted_secret not in json.dumps([e.item.model_dump() for e in result.events])


async def test_a_slow_tool_plays_the_filler_while_the_caller_waits(text_call: Any) -> None:
    call = await text_call(
        OfflineScript(turns=[turn("wait", "slow_but_fine")]), filler_after_seconds=0.05
    )
    said: list[str] = []
    call.session.on(
        "speech_created", lambda event: said.append(event.source) if event.source == "say" else None
    )
    call.state.filler = await call_filler(call)

    result = await call.session.run(user_input="I can wait")

    assert said == ["say"]
    assert spoken(result) == ["done"]


async def call_filler(call: Any) -> Any:
    from voiceagents.worker.offline_model import OfflineVoice
    from voiceagents.worker.speech import PhraseAudio

    return await PhraseAudio(OfflineVoice(), None).get("One moment, please.", "Puck")


async def test_redacted_arguments_never_reach_the_call_event(
    text_call: Any, make_config: Any
) -> None:
    script = OfflineScript(
        turns=[turn("refund", "refund_order", order_id="9", card_number="4111111111111111")]
    )
    call = await text_call(script, make_config(orders_auth="none"))

    await call.session.run(user_input="I want a refund")

    (event,) = [e for e in call.published if isinstance(e, ToolInvoked)]
    assert event.arguments == {"order_id": "9", "card_number": "[redacted]"}


async def test_a_tool_without_credentials_answers_unavailable(text_call: Any) -> None:
    # No tool-vault connection at all: the orders tool needs an API key it cannot get.
    call = await text_call(OfflineScript(turns=[turn("order", "lookup_order", order_id="1")]))

    result = await call.session.run(user_input="my order please")

    assert spoken(result) == [UNAVAILABLE_SENTENCE]
    assert call.state.credentials.unavailable == {"at-orders": "unavailable"}


async def test_asked_for_a_function_it_was_not_given_the_agent_says_it_cannot(
    text_call: Any,
) -> None:
    # cancel_order is unselected for this agent: the model never has it, so cannot call it.
    script = OfflineScript(
        turns=[turn("cancel", "cancel_order", order_id="7"), ScriptTurn(when="hello", say="Hi!")]
    )
    call = await text_call(script)

    refused = await call.session.run(user_input="Please cancel order seven")
    after = await call.session.run(user_input="hello?")

    assert spoken(refused) == [CANNOT_DO_SENTENCE]
    assert spoken(after) == ["Hi!"]
    assert not [e for e in call.published if isinstance(e, ToolInvoked)]
