"""Leads on calls through the worker, against the HubSpot contacts stand-in: a lead call notes
and qualifies the caller; the same caller calling again updates the same contact."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import jsonschema
import msgspec
import nats
import pytest
from nats.aio.client import Client
from scripted_calls import ReleasingToolVault, ScriptedCall, open_call

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import ToolInvoked
from voiceagents.contracts.tools import PlatformToolSpec
from voiceagents.contracts.toolvault import RELEASE_SUBJECT, ToolCredentials
from voiceagents.devstack.servers import NatsServer
from voiceagents.worker.offline_model import OfflineScript, ScriptToolCall, ScriptTurn
from voiceagents.worker.standins.hubspot import HubSpotStandIn
from voiceagents.worker.tools.builtin.leads import NOT_THIS_CALLS_LEAD, LeadFields, Leads
from voiceagents.worker.tools.discovery import function_specs
from voiceagents.worker.tools.print_catalog import catalog_json

pytestmark = pytest.mark.unit

TOKEN = "pat-na1-" + uuid.uuid4().hex
CALLER = "+14155550123"
SCORE_PROPERTIES = ("lead_score", "lead_score_reasons")
# The stand-in numbers contacts from 51: the first lead of a test is "51".
FIRST_LEAD = "51"


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpotStandIn]:
    async with HubSpotStandIn(access_token=TOKEN, custom_properties=SCORE_PROPERTIES) as stand_in:
        yield stand_in


@pytest.fixture
async def vault(nats_server: NatsServer) -> AsyncIterator[ReleasingToolVault]:
    nc = await nats.connect(**nats_server.credentials("toolvault"))
    stand_in = ReleasingToolVault(
        credentials={
            "at-leads": ToolCredentials(
                agent_tool_id="at-leads", kind="api_key", secrets={"api_key": TOKEN}
            )
        }
    )
    subscription = await nc.subscribe(RELEASE_SUBJECT, cb=stand_in.handle)
    await nc.flush()  # subscribed on the server before any call asks
    yield stand_in
    await subscription.unsubscribe()
    await nc.close()


@pytest.fixture
async def calls() -> AsyncIterator[list[ScriptedCall]]:
    started: list[ScriptedCall] = []
    yield started
    for call in started:
        await call.session.aclose()


def leads_config(base_url: str) -> dict[str, Any]:
    return {"base_url": base_url, "network_allowlist": ["127.0.0.1/32"]}


def lead_agent(base_url: str) -> AgentRuntimeConfig:
    return AgentRuntimeConfig(
        agent_id=f"agent-{uuid.uuid4().hex[:8]}",
        org_id="org-1",
        version=1,
        name="Lea",
        system_prompt="You qualify sales leads for Acme's software.",
        tools=[
            ToolBinding(
                agent_tool_id="at-leads",
                tool_name="leads",
                auth_type="api_key",
                config=leads_config(base_url),
                functions=function_specs(Leads),
            )
        ],
    )


def tool(function: str, /, **arguments: Any) -> list[ScriptToolCall]:
    return [ScriptToolCall(name=function, arguments=arguments)]


FIRST_CALL = OfflineScript(
    turns=[
        ScriptTurn(
            when="interested",
            tool_calls=tool(
                "create_lead",
                name="Ana Lima",
                phone=CALLER,
                email="Ana@Acme.test",
                company="Acme Bakery",
                notes="Wants 20 seats of the Pro plan.",
            ),
        ),
        ScriptTurn(
            when="budget",
            tool_calls=tool(
                "qualify_lead",
                lead_id=FIRST_LEAD,
                score=80,
                reasons=["budget approved", "needs it in January"],
            ),
        ),
    ]
)
SECOND_CALL = OfflineScript(
    turns=[
        ScriptTurn(
            when="again",
            tool_calls=tool(
                "create_lead",
                name="Ana Lima",
                phone="(415) 555-0123",  # said without the country code this time
                notes="Now wants 30 seats.",
            ),
        ),
        ScriptTurn(
            when="company",
            tool_calls=tool("update_lead", lead_id=FIRST_LEAD, fields={"company": "Acme Foods"}),
        ),
        ScriptTurn(
            when="other",
            tool_calls=tool("update_lead", lead_id="52", fields={"company": "Mine now"}),
        ),
    ]
)


async def test_a_lead_call_creates_then_qualifies_and_a_second_call_updates_the_same_lead(
    hubspot: HubSpotStandIn,
    vault: ReleasingToolVault,
    worker_nats: Client,
    calls: list[ScriptedCall],
) -> None:
    first = await open_call(
        lead_agent(hubspot.base_url), FIRST_CALL, worker_nats, from_number=CALLER
    )
    calls.append(first)

    [noted] = await first.say("Hi, I'm interested in your Pro plan.")
    assert json.loads(noted) == {
        "lead_id": FIRST_LEAD,
        "created": True,
        "answer": "Thanks, I've noted your details.",
    }
    [qualified] = await first.say("Our budget is approved and we need it in January.")
    assert json.loads(qualified) == {"qualified": True, "score": 80}

    [contact] = hubspot.contacts.values()
    assert contact.properties["firstname"] == "Ana"
    assert contact.properties["lastname"] == "Lima"
    assert contact.properties["phone"] == CALLER
    assert contact.properties["email"] == "ana@acme.test"
    assert contact.properties["lifecyclestage"] == "salesqualifiedlead"
    assert contact.properties["hs_lead_status"] == "OPEN"
    assert contact.properties["lead_score"] == "80"
    assert contact.properties["lead_score_reasons"] == "budget approved; needs it in January"
    assert contact.properties["message"].endswith("phone call: Wants 20 seats of the Pro plan.")

    bo = hubspot.add_contact(firstname="Bo", phone="+14155550999", company="Bo's Bikes")
    assert bo.id == "52"
    second = await open_call(
        lead_agent(hubspot.base_url), SECOND_CALL, worker_nats, from_number=CALLER
    )
    calls.append(second)

    [again] = await second.say("It's Ana again, we'd like more seats.")
    assert json.loads(again) == {
        "lead_id": FIRST_LEAD,
        "created": False,
        "answer": "Thanks, I've updated your details.",
    }
    [updated] = await second.say("Our company is called Acme Foods now.")
    assert json.loads(updated)["updated"] is True
    [refused] = await second.say("And change the other contact, Bo, as well.")
    assert json.loads(refused) == {"updated": False, "answer": NOT_THIS_CALLS_LEAD}

    assert sorted(hubspot.contacts) == [FIRST_LEAD, "52"]
    assert contact.properties["company"] == "Acme Foods"
    notes = contact.properties["message"].splitlines()
    assert [line.split("phone call: ")[1] for line in notes] == [
        "Wants 20 seats of the Pro plan.",
        "Now wants 30 seats.",
    ]
    assert bo.properties["company"] == "Bo's Bikes"
    invoked = [e for e in second.events if isinstance(e, ToolInvoked)]
    assert [(e.function, e.outcome) for e in invoked] == [
        ("create_lead", "ok"),
        ("update_lead", "ok"),
        ("update_lead", "ok"),
    ]
    # The caller's name and number never reach a call event.
    assert invoked[0].arguments["name"] == invoked[0].arguments["phone"] == "[redacted]"


def on_call(from_number: str) -> Any:
    return SimpleNamespace(userdata=SimpleNamespace(call=SimpleNamespace(from_number=from_number)))


def leads(hubspot: HubSpotStandIn, token: str = TOKEN) -> Leads:
    return Leads(
        config=leads_config(hubspot.base_url),
        credentials=ToolCredentials(
            agent_tool_id="at-leads", kind="api_key", secrets={"api_key": token}
        ),
    )


async def test_a_caller_on_another_phone_is_found_by_email(hubspot: HubSpotStandIn) -> None:
    known = hubspot.add_contact(firstname="Ana", email="ana@acme.test", phone=CALLER)

    result = await leads(hubspot).create_lead(
        on_call("+442071234567"),
        "Ana Lima",
        "+44 20 7123 4567",
        "Calling from the London office.",
        email="ANA@acme.test",
    )

    assert result["lead_id"] == known.id and result["created"] is False
    assert len(hubspot.contacts) == 1
    assert known.properties["phone"] == "+442071234567"


async def test_a_lead_from_another_call_cannot_be_qualified_or_changed(
    hubspot: HubSpotStandIn,
) -> None:
    other = hubspot.add_contact(firstname="Bo", phone="+14155550999")
    tool = leads(hubspot)

    assert (await tool.qualify_lead(on_call(CALLER), other.id, 10, ["no budget"]))[
        "answer"
    ] == NOT_THIS_CALLS_LEAD
    assert (await tool.update_lead(on_call(CALLER), other.id, LeadFields(name="Eve")))[
        "answer"
    ] == NOT_THIS_CALLS_LEAD
    assert other.properties == {"firstname": "Bo", "phone": "+14155550999"}


async def test_a_low_score_marks_the_lead_unqualified_and_bad_scores_are_refused(
    hubspot: HubSpotStandIn,
) -> None:
    tool = leads(hubspot)
    lead = await tool.create_lead(on_call(CALLER), "Cy Young", CALLER, "Just browsing.")

    low = await tool.qualify_lead(on_call(CALLER), lead["lead_id"], 20, ["no budget"])
    wrong = await tool.qualify_lead(on_call(CALLER), lead["lead_id"], 150, [])

    assert low == {"qualified": False, "score": 20}
    assert wrong == {"qualified": False, "error": "score must be between 0 and 100"}
    contact = hubspot.contacts[lead["lead_id"]]
    assert contact.properties["hs_lead_status"] == "UNQUALIFIED"
    assert contact.properties["lifecyclestage"] == "lead"
    assert contact.properties["lead_score"] == "20"


async def test_a_wrong_token_or_a_missing_property_fails_with_the_reason(
    hubspot: HubSpotStandIn,
) -> None:
    with pytest.raises(Exception, match="refused the API token"):
        await leads(hubspot, token="wrong").create_lead(on_call(CALLER), "Cy", CALLER, "Hi.")
    async with HubSpotStandIn(access_token=TOKEN) as bare:  # no custom score properties
        tool = leads(bare)
        lead = await tool.create_lead(on_call(CALLER), "Cy", CALLER, "Hi.")
        with pytest.raises(Exception, match='Property "lead_score" does not exist'):
            await tool.qualify_lead(on_call(CALLER), lead["lead_id"], 50, ["maybe"])


def test_the_functions_and_their_schemas() -> None:
    specs = {spec.name: spec for spec in function_specs(Leads)}
    assert sorted(specs) == ["create_lead", "qualify_lead", "update_lead"]
    assert specs["create_lead"].parameters["required"] == ["name", "phone", "notes"]
    assert specs["create_lead"].redact_arguments == ["name", "phone", "email"]
    fields = specs["update_lead"].parameters["$defs"]["LeadFields"]["properties"]
    assert sorted(fields) == ["company", "email", "name", "notes", "phone"]
    reasons = specs["qualify_lead"].parameters["properties"]["reasons"]
    assert reasons["type"] == "array"
    assert not any(spec.idempotent for spec in specs.values())


def test_the_catalog_lists_leads_and_email_with_their_schemas() -> None:
    tools = {t.name: t for t in msgspec.json.decode(catalog_json(), type=list[PlatformToolSpec])}
    assert [f.name for f in tools["leads"].functions] == [
        "create_lead",
        "update_lead",
        "qualify_lead",
    ]
    assert [f.name for f in tools["email"].functions] == ["send_confirmation_email"]
    for name in ("leads", "email"):
        assert tools[name].auth_type == "api_key"
        jsonschema.Draft202012Validator.check_schema(tools[name].config_schema)
    jsonschema.validate(leads_config("https://api.hubapi.com"), tools["leads"].config_schema)
    assert tools["email"].config_schema["required"] == ["host", "sender"]
