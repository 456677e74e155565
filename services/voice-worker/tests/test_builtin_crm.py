"""The CRM tool against the Zendesk stand-in: the caller is found by the number they call from,
tickets are opened for them, and only their own tickets can be changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.standins.zendesk import ZendeskStandIn
from voiceagents.worker.tools.builtin.crm import Crm
from voiceagents.worker.tools.discovery import function_specs

pytestmark = pytest.mark.unit

API_TOKEN = "zd-token-" + "7" * 24
CALLER = "+14155550123"


@pytest.fixture
async def zendesk() -> AsyncIterator[ZendeskStandIn]:
    async with ZendeskStandIn(email="agent@acme.test", api_token=API_TOKEN) as stand_in:
        yield stand_in


def crm(zendesk: ZendeskStandIn, token: str = API_TOKEN) -> Crm:
    return Crm(
        config={
            "base_url": zendesk.base_url,
            "email": "agent@acme.test",
            "network_allowlist": ["127.0.0.1/32"],
        },
        credentials=ToolCredentials(
            agent_tool_id="at-crm", kind="api_key", secrets={"api_key": token}
        ),
    )


def on_call(from_number: str = CALLER) -> Any:
    """What a tool sees of the call: the session's userdata with the call context."""
    return SimpleNamespace(userdata=SimpleNamespace(call=SimpleNamespace(from_number=from_number)))


async def test_the_caller_is_found_by_the_number_they_call_from(zendesk: ZendeskStandIn) -> None:
    ana = zendesk.add_user("Ana Lima", email="ana@example.com", phone="+1 (415) 555-0123")
    zendesk.add_ticket("Router keeps disconnecting", ana)
    zendesk.add_ticket("Old invoice question", ana, status="solved")

    found = await crm(zendesk).get_customer(on_call())

    assert found["found"] is True
    assert found["customer"]["name"] == "Ana Lima"
    assert [t["subject"] for t in found["open_tickets"]] == ["Router keeps disconnecting"]


async def test_a_customer_can_be_looked_up_by_email(zendesk: ZendeskStandIn) -> None:
    zendesk.add_user("Bo Chen", email="bo@example.com")

    found = await crm(zendesk).get_customer(on_call("+14155550999"), email="BO@example.com")

    assert found["customer"]["name"] == "Bo Chen"
    assert (await crm(zendesk).get_customer(on_call("+14155550999")))["found"] is False


async def test_a_ticket_is_opened_for_the_caller(zendesk: ZendeskStandIn) -> None:
    ana = zendesk.add_user("Ana Lima", phone=CALLER)

    created = await crm(zendesk).create_ticket(
        on_call(), "Router keeps disconnecting", "It drops every evening.", "high"
    )

    ticket = zendesk.tickets[created["ticket_id"]]
    assert ticket.requester_id == ana.id
    assert ticket.priority == "high"
    assert ticket.description.startswith("It drops every evening.")
    assert created["answer"] == f"I've opened ticket number {ticket.id} for you."


async def test_only_the_callers_own_ticket_can_be_updated(zendesk: ZendeskStandIn) -> None:
    ana = zendesk.add_user("Ana Lima", phone=CALLER)
    bo = zendesk.add_user("Bo Chen", phone="+14155550999")
    mine = zendesk.add_ticket("Router keeps disconnecting", ana)
    theirs = zendesk.add_ticket("Billing", bo)
    tool = crm(zendesk)

    solved = await tool.update_ticket(on_call(), mine.id, "solved", "Works again, thanks.")
    refused = await tool.update_ticket(on_call(), theirs.id, "solved")
    unknown = await tool.update_ticket(on_call(), 999999, "solved")

    assert solved == {"updated": True, "answer": f"Ticket {mine.id} is marked solved."}
    assert mine.status == "solved"
    assert mine.comments[-1]["body"] == "Works again, thanks."
    assert theirs.status == "open"
    assert refused == unknown  # the same words: nothing about the other ticket is revealed


async def test_the_functions_declare_their_schemas_and_flags() -> None:
    specs = {spec.name: spec for spec in function_specs(Crm)}
    assert sorted(specs) == ["create_ticket", "get_customer", "update_ticket"]
    assert specs["get_customer"].idempotent
    assert specs["get_customer"].redact_arguments == ["phone", "email"]
    assert not specs["create_ticket"].idempotent
    priority = specs["create_ticket"].parameters["properties"]["priority"]
    assert {"enum": ["low", "normal", "high", "urgent"], "type": "string"} in priority["anyOf"]
    assert specs["create_ticket"].parameters["required"] == ["subject", "description"]
    assert all(not spec.oauth_scopes for spec in specs.values())


async def test_a_wrong_api_token_fails_instead_of_answering(zendesk: ZendeskStandIn) -> None:
    with pytest.raises(Exception, match="refused the API token"):
        await crm(zendesk, token="wrong").get_customer(on_call())
