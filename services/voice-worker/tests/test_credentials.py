"""Credentials come from tool-vault sealed to the call's own key; when tool-vault is down or
refuses, the agent tells the caller the tool is unavailable and the call goes on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.aio.client import Client

from voiceagents.contracts.calls import ToolInvoked
from voiceagents.contracts.toolvault import ReleaseError
from voiceagents.worker.credentials import release_credentials
from voiceagents.worker.offline_model import OfflineScript, ScriptToolCall, ScriptTurn
from voiceagents.worker.tools.execution import UNAVAILABLE_SENTENCE

pytestmark = pytest.mark.integration

SCRIPT = OfflineScript(
    turns=[
        ScriptTurn(
            when="order",
            tool_calls=[ScriptToolCall(name="lookup_order", arguments={"order_id": "5"})],
            after_tools="{result}",
        ),
        ScriptTurn(when="hello", say="Hello again!"),
    ]
)


def spoken(result: Any) -> list[str]:
    return [
        e.item.text_content
        for e in result.events
        if e.type == "message" and e.item.role == "assistant"
    ]


async def test_released_credentials_reach_the_tool_and_only_tools_with_auth_are_asked_for(
    text_call: Any, toolvault: Any, worker_nats: Client, planted_secret: str
) -> None:
    call = await text_call(SCRIPT, nc=worker_nats)

    result = await call.session.run(user_input="my order please")

    assert json.loads(spoken(result)[0])["authorized"] is True
    (request,) = toolvault.requests
    assert request.agent_tool_ids == ["at-orders"]  # the flaky tool needs no credentials
    assert request.grant == "test-grant"
    assert planted_secret not in repr(call.state.credentials)


@pytest.mark.parametrize("code", ["not_connected", "refresh_failed"])
async def test_a_tool_tool_vault_refuses_is_explained_and_the_call_goes_on(
    text_call: Any, toolvault: Any, worker_nats: Client, code: str
) -> None:
    toolvault.tool_errors = [
        ReleaseError(code=code, message="connect the tool first", agent_tool_id="at-orders")
    ]
    call = await text_call(SCRIPT, nc=worker_nats)

    refused = await call.session.run(user_input="my order please")
    after = await call.session.run(user_input="hello?")

    assert spoken(refused) == [UNAVAILABLE_SENTENCE]
    assert spoken(after) == ["Hello again!"]
    assert call.state.credentials.unavailable == {"at-orders": code}


async def test_a_whole_request_refusal_marks_every_tool_unavailable(
    toolvault: Any, worker_nats: Client
) -> None:
    toolvault.error = ReleaseError(code="grant_expired", message="grant expired")

    released = await release_credentials(worker_nats, "grant", ["a", "b"], timeout=2.0)

    assert released.credentials == {}
    assert released.unavailable == {"a": "grant_expired", "b": "grant_expired"}


async def test_tool_vault_unreachable_is_explained_and_the_call_goes_on(
    text_call: Any, worker_nats: Client
) -> None:
    # NATS is up, but nobody answers toolvault.v1.release on this server (no responders).
    call = await text_call(SCRIPT, nc=worker_nats, credentials_timeout_seconds=0.5)

    # The tool is still in the model's list: it answers "unavailable" instead of vanishing.
    assert "lookup_order" in call.received_tools
    refused = await call.session.run(user_input="my order please")
    after = await call.session.run(user_input="hello?")

    assert spoken(refused) == [UNAVAILABLE_SENTENCE]
    assert spoken(after) == ["Hello again!"]
    assert call.state.credentials.unavailable == {"at-orders": "unavailable"}
    (invoked,) = [e for e in call.published if isinstance(e, ToolInvoked)]
    assert (invoked.function, invoked.outcome) == ("lookup_order", "unavailable")
