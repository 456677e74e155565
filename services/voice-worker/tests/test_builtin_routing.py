"""Routing to the right human: the model names a department; while it is open the live call is
transferred to its number (Twilio stand-in), out of hours the caller is offered a callback and a
lead is written (HubSpot stand-in). Calls run through the worker with the offline model and a
fixed clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import msgspec
import nats
import pytest
from nats.aio.client import Client
from scripted_calls import ReleasingToolVault, ScriptedCall, open_call

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallTransferred
from voiceagents.contracts.tools import PlatformToolSpec
from voiceagents.contracts.toolvault import RELEASE_SUBJECT, ToolCredentials
from voiceagents.devstack.servers import NatsServer
from voiceagents.worker.offline_model import OfflineScript, ScriptToolCall, ScriptTurn
from voiceagents.worker.settings import Settings
from voiceagents.worker.standins.hubspot import HubSpotStandIn
from voiceagents.worker.standins.twilio_calls import LiveCall, TwilioStandIn
from voiceagents.worker.standins.zendesk import ZendeskStandIn
from voiceagents.worker.tools.builtin.call_control import (
    CallControl,
    RoutingConfigError,
    parse_routing,
)
from voiceagents.worker.tools.builtin.crm import Crm
from voiceagents.worker.tools.builtin.leads import Leads
from voiceagents.worker.tools.discovery import function_specs
from voiceagents.worker.tools.execution import ToolInvocation, ToolRunner
from voiceagents.worker.tools.print_catalog import catalog_json
from voiceagents.worker.tools.toolbox import build_call_tools

pytestmark = pytest.mark.unit

ACCOUNT_SID = "AC" + "2" * 32
AUTH_TOKEN = "e" * 32
HUBSPOT_TOKEN = "pat-na1-" + uuid.uuid4().hex
CALLER = "+14155550123"
NEW_YORK = ZoneInfo("America/New_York")
SALES = "+14155550201"
SUPPORT = "+14155550202"
WEEKDAYS_9_TO_5 = {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}
ROUTING = {
    "timezone": "America/New_York",
    "departments": {
        "sales": {"number": SALES, "hours": WEEKDAYS_9_TO_5},
        "support": {"number": SUPPORT},  # always open
    },
    "fallback_department": "support",
    "after_hours": "lead",
}
# Tuesday 24 November 2026, New York time.
TUESDAY_MORNING = datetime(2026, 11, 24, 10, 30, tzinfo=NEW_YORK)
TUESDAY_NIGHT = datetime(2026, 11, 24, 22, 15, tzinfo=NEW_YORK)
SATURDAY = datetime(2026, 11, 28, 11, 0, tzinfo=NEW_YORK)


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandIn]:
    async with TwilioStandIn(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as stand_in:
        yield stand_in


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpotStandIn]:
    async with HubSpotStandIn(access_token=HUBSPOT_TOKEN) as stand_in:
        yield stand_in


@pytest.fixture
async def vault(nats_server: NatsServer) -> AsyncIterator[ReleasingToolVault]:
    nc = await nats.connect(**nats_server.credentials("toolvault"))
    stand_in = ReleasingToolVault(
        credentials={
            "at-leads": ToolCredentials(
                agent_tool_id="at-leads", kind="api_key", secrets={"api_key": HUBSPOT_TOKEN}
            )
        }
    )
    subscription = await nc.subscribe(RELEASE_SUBJECT, cb=stand_in.handle)
    await nc.flush()  # subscribed on the server before any call asks
    yield stand_in
    await subscription.unsubscribe()
    await nc.close()


@pytest.fixture
async def start_call(
    twilio: TwilioStandIn,
    hubspot: HubSpotStandIn,
    vault: ReleasingToolVault,
    worker_nats: Client,
) -> AsyncIterator[Any]:
    """A call to an agent with routing and a leads tool, at the time `at`."""
    started: list[ScriptedCall] = []

    async def start(department: str, at: datetime) -> tuple[ScriptedCall, LiveCall]:
        config = AgentRuntimeConfig(
            agent_id=f"agent-{uuid.uuid4().hex[:8]}",
            org_id="org-1",
            version=1,
            name="Sam",
            system_prompt="You answer Acme's phone.",
            tools=[
                ToolBinding(
                    agent_tool_id="system-call-control",
                    tool_name="call_control",
                    config={"twilio_api_base_url": twilio.base_url, "routing": ROUTING},
                    functions=function_specs(CallControl),
                ),
                ToolBinding(
                    agent_tool_id="at-leads",
                    tool_name="leads",
                    auth_type="api_key",
                    config={"base_url": hubspot.base_url, "network_allowlist": ["127.0.0.1/32"]},
                    functions=function_specs(Leads),
                ),
            ],
        )
        script = OfflineScript(
            turns=[
                ScriptTurn(
                    when="talk",
                    tool_calls=[
                        ScriptToolCall(
                            name="transfer_to_human",
                            arguments={
                                "reason": "wants a quote for 20 seats",
                                "department": department,
                                "caller_name": "Ana Lima",
                            },
                        )
                    ],
                    after_tools="Connecting you now.",
                )
            ]
        )
        # The worker's own Twilio account (its settings) is what transfers.
        settings = Settings(
            dev_mode=True,
            model="offline",
            twilio_account_sid=ACCOUNT_SID,
            twilio_auth_token=AUTH_TOKEN,
            twilio_api_base_url=twilio.base_url,
        )
        call = await open_call(config, script, worker_nats, from_number=CALLER, settings=settings)
        started.append(call)
        control = call.state.tools.instances["system-call-control"]
        assert isinstance(control, CallControl)
        control.now = lambda: at.astimezone(UTC)
        return call, twilio.add_call(call.state.call.call_sid)

    yield start
    for call in started:
        await call.session.aclose()


async def transferred_to(live: LiveCall, call: ScriptedCall) -> str:
    """The TwiML the live call was redirected to, once the transfer has been reported."""
    async with asyncio.timeout(30):
        # The stand-in and the event list only record: there is nothing to await.
        while not (live.updates and transfers(call)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    [update] = live.updates
    return str(update["Twiml"])


def transfers(call: ScriptedCall) -> list[CallTransferred]:
    return [e for e in call.events if isinstance(e, CallTransferred)]


def dial(number: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{number}</Dial></Response>'


async def test_sales_in_business_hours_is_transferred_to_the_sales_number(
    start_call: Any, hubspot: HubSpotStandIn
) -> None:
    call, live = await start_call("Sales", TUESDAY_MORNING)

    spoken = await call.say("Can I talk to someone in sales?")

    assert spoken == ["Connecting you now."]
    assert await transferred_to(live, call) == dial(SALES)
    [event] = transfers(call)
    assert (event.to_number, event.reason) == (SALES, "wants a quote for 20 seats")
    assert not hubspot.contacts


async def test_sales_at_night_offers_a_callback_and_creates_a_lead(
    start_call: Any, hubspot: HubSpotStandIn
) -> None:
    call, live = await start_call("sales", TUESDAY_NIGHT)

    spoken = await call.say("Can I talk to someone in sales?")

    assert spoken == [
        "Our sales team is closed right now; they're back tomorrow at 9 am. I've asked them "
        "to call you back on the number you're calling from. Is there anything else I can "
        "help with?"
    ]
    [lead] = hubspot.contacts.values()
    assert lead.properties["phone"] == CALLER
    assert (lead.properties["firstname"], lead.properties["lastname"]) == ("Ana", "Lima")
    assert lead.properties["message"].endswith(
        "Callback requested for sales: wants a quote for 20 seats"
    )
    await asyncio.sleep(0.2)  # time for a transfer that must not happen
    assert not live.updates
    assert not transfers(call)


async def test_on_saturday_sales_is_back_on_monday_and_unknown_departments_fall_back(
    start_call: Any, hubspot: HubSpotStandIn
) -> None:
    weekend, _ = await start_call("sales", SATURDAY)
    [closed] = await weekend.say("I'd like to talk to sales.")
    assert closed.startswith("Our sales team is closed right now; they're back on Monday at 9 am.")

    call, live = await start_call("plumbing", TUESDAY_NIGHT)
    await call.say("Can I talk to a person about plumbing?")
    # Support, the fallback department, is always open.
    assert await transferred_to(live, call) == dial(SUPPORT)


def test_a_bad_routing_table_is_refused_naming_the_field() -> None:
    with pytest.raises(RoutingConfigError, match=r"routing\.departments\.sales\.hours\.monday"):
        parse_routing(
            {
                "routing": {
                    **ROUTING,
                    "departments": {"sales": {"number": SALES, "hours": {"monday": "09:00-17:00"}}},
                }
            }
        )
    with pytest.raises(RoutingConfigError, match=r"routing\.fallback_department"):
        parse_routing({"routing": {**ROUTING, "fallback_department": "billing"}})
    with pytest.raises(RoutingConfigError, match=r"routing\.timezone"):
        parse_routing({"routing": {**ROUTING, "timezone": "Mars/Olympus"}})
    assert parse_routing({}) is None


def test_transfer_takes_the_department_and_the_callers_name() -> None:
    specs = {spec.name: spec for spec in function_specs(CallControl)}
    transfer = specs["transfer_to_human"].parameters
    assert transfer["required"] == ["reason"]
    assert {"department", "caller_name"} <= set(transfer["properties"])


def test_the_catalog_offers_the_routing_table_to_admins() -> None:
    tools = {t.name: t for t in msgspec.json.decode(catalog_json(), type=list[PlatformToolSpec])}
    schema = tools["call_control"].config_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"routing": ROUTING}, schema)
    late = {"sales": {"number": SALES, "hours": {"mon": "9am-5pm"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"routing": {**ROUTING, "departments": late}}, schema)


ZENDESK_TOKEN = "zd-" + "3" * 20


def ticket_callback_call(zendesk: ZendeskStandIn, crm_functions: list[str]) -> Any:
    """A call's context out of hours, whose agent binds the crm tool with `crm_functions`
    enabled (the registry has removed the others); tool calls are reported to `.reports`."""
    reports: list[ToolInvocation] = []
    crm = ToolBinding(
        agent_tool_id="at-crm",
        tool_name="crm",
        auth_type="api_key",
        config={
            "base_url": zendesk.base_url,
            "email": "desk@acme.test",
            "network_allowlist": ["127.0.0.1/32"],
        },
        functions=[spec for spec in function_specs(Crm) if spec.name in crm_functions],
    )
    tools = build_call_tools(
        [crm],
        {"crm": Crm},
        {
            "at-crm": ToolCredentials(
                agent_tool_id="at-crm", kind="api_key", secrets={"api_key": ZENDESK_TOKEN}
            )
        },
        {},
        ToolRunner(report=reports.append),
        None,
    )
    call = SimpleNamespace(call_sid="CA1", from_number=CALLER)
    return SimpleNamespace(userdata=SimpleNamespace(call=call, tools=tools), reports=reports)


def closed_control(after_hours: str) -> CallControl:
    control = CallControl(config={"routing": {**ROUTING, "after_hours": after_hours}})
    control.now = lambda: TUESDAY_NIGHT.astimezone(UTC)
    return control


async def test_out_of_hours_with_tickets_the_callback_request_is_a_ticket() -> None:
    async with ZendeskStandIn(email="desk@acme.test", api_token=ZENDESK_TOKEN) as zendesk:
        ana = zendesk.add_user("Ana Lima", phone=CALLER)
        context = ticket_callback_call(zendesk, ["get_customer", "create_ticket"])

        result = await closed_control("ticket").transfer_to_human(
            context, "invoice question", "sales", "Ana"
        )

        [ticket] = zendesk.tickets.values()
        assert result["callback"] == {"ticket_id": ticket.id}
        assert ticket.requester_id == ana.id
        assert ticket.subject == "Callback: sales"
        assert ticket.description.startswith("Callback requested for sales: invoice question")
        # Run as the model's own call would be: reported like one.
        [report] = context.reports
        assert (report.binding.function, report.outcome) == ("create_ticket", "ok")


async def test_a_callback_is_not_written_with_a_function_the_agent_did_not_enable() -> None:
    async with ZendeskStandIn(email="desk@acme.test", api_token=ZENDESK_TOKEN) as zendesk:
        zendesk.add_user("Ana Lima", phone=CALLER)
        # create_ticket is in the agent tool's unselected_functions.
        context = ticket_callback_call(zendesk, ["get_customer"])

        result = await closed_control("ticket").transfer_to_human(
            context, "invoice question", "sales", "Ana"
        )

        assert result["callback_requested"] is False
        assert result["say_to_caller"].endswith("Please call again then.")
        assert not zendesk.tickets
        assert not context.reports
