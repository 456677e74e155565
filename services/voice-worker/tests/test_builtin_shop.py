"""The shop tool: an order's status only for the person it belongs to, and returns only for
orders verified on the call. The privacy check runs through the worker with the offline model."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from nats.aio.client import Client

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, DispatchMetadata
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.call import WorkerRuntime, new_agent, new_session, prepare_call
from voiceagents.worker.events import CallEvents
from voiceagents.worker.offline_model import (
    OfflineRealtimeModel,
    OfflineScript,
    OfflineVoice,
    ScriptBook,
    ScriptToolCall,
    ScriptTurn,
)
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import PhraseAudio
from voiceagents.worker.standins.shopify import ShopifyStandIn
from voiceagents.worker.tools.builtin.shop import NOT_FOUND, Shop, belongs_to
from voiceagents.worker.tools.discovery import discover, function_specs
from voiceagents.worker.tools.ssrf import RequestRefused

pytestmark = pytest.mark.unit

CALLER = "+14155550123"
TOKEN = "shpat_" + "5" * 32


@pytest.fixture
async def store() -> AsyncIterator[ShopifyStandIn]:
    async with ShopifyStandIn(access_token=TOKEN) as stand_in:
        yield stand_in


def shop(store: ShopifyStandIn) -> Shop:
    return Shop(
        config={"shop_url": store.shop_url, "network_allowlist": ["127.0.0.1/32"]},
        credentials=ToolCredentials(
            agent_tool_id="at-shop", kind="api_key", secrets={"api_key": TOKEN}
        ),
    )


def on_call(from_number: str = CALLER) -> Any:
    return SimpleNamespace(userdata=SimpleNamespace(call=SimpleNamespace(from_number=from_number)))


async def test_someone_elses_order_reveals_nothing_through_the_worker(
    toolvault: Any, worker_nats: Client, planted_secret: str
) -> None:
    async with ShopifyStandIn(access_token=planted_secret) as store:
        mine = store.add_order(email="ana@example.com", phone=CALLER, items=["Blue sweater"])
        theirs = store.add_order(
            email="bo@example.com",
            phone="+14155550999",
            items=["Garden hose"],
            shipped_with=("UPS", "1Z999AA10123456784"),
        )
        config = AgentRuntimeConfig(
            agent_id=f"agent-{uuid.uuid4().hex[:8]}",
            org_id="org-1",
            version=1,
            name="Ada",
            system_prompt="You help the store's customers.",
            tools=[
                ToolBinding(
                    agent_tool_id="at-shop",
                    tool_name="shop",
                    auth_type="api_key",
                    config={"shop_url": store.shop_url, "network_allowlist": ["127.0.0.1/32"]},
                    functions=function_specs(Shop),
                )
            ],
        )
        mirror = ConfigMirror()
        mirror.apply_agent(config)
        runtime = WorkerRuntime(
            settings=Settings(dev_mode=True, model="offline"),
            mirror=mirror,
            tool_classes=discover(),
            phrases=PhraseAudio(OfflineVoice(), None),
            scripts=ScriptBook(),
        )
        sid = f"CA{uuid.uuid4().hex}"
        call = CallContext(
            call_sid=sid,
            room=f"call_{sid}",
            org_id="org-1",
            agent_id=config.agent_id,
            agent_version=1,
            from_number=CALLER,
            to_number="+14155550100",
            started_at=datetime.now(UTC),
        )
        state = await prepare_call(
            runtime,
            DispatchMetadata(call=call, grant="grant"),
            nc=worker_nats,
            js=None,
            started=0.0,
            events=CallEvents(None, call),
        )

        def lookup(number: int, **arguments: str) -> ScriptTurn:
            return ScriptTurn(
                when=str(number),
                tool_calls=[
                    ScriptToolCall(
                        name="get_order_status",
                        arguments={"order_number": str(number), **arguments},
                    )
                ],
            )

        script = OfflineScript(
            turns=[
                lookup(theirs.number),
                lookup(999999),
                lookup(mine.number),
            ]
        )
        session = new_session(OfflineRealtimeModel(script=script, realtime=False), state)
        await session.start(new_agent(state))
        try:

            async def answer(words: str) -> dict[str, Any]:
                result = await session.run(user_input=words)
                [spoken] = [
                    e.item.text_content
                    for e in result.events
                    if e.type == "message" and e.item.role == "assistant"
                ]
                decoded: dict[str, Any] = json.loads(spoken)
                return decoded

            someone_elses = await answer(f"Where is order {theirs.number}?")
            unknown = await answer("Where is order 999999?")
            own = await answer(f"And order {mine.number}?")
        finally:
            await session.aclose()

    assert someone_elses == unknown == {"found": False, "answer": NOT_FOUND}
    for hidden in ("UPS", "Garden hose", "bo@example.com", "6784", "shipped"):
        assert hidden not in json.dumps(someone_elses)
    assert own["found"] is True
    assert own["answer"] == f"Order #{mine.number} hasn't shipped yet."


async def test_an_order_is_described_once_the_caller_gives_its_email(store: ShopifyStandIn) -> None:
    order = store.add_order(
        email="bo@example.com",
        phone=None,
        items=["Garden hose"],
        shipped_with=("UPS", "1Z999AA10123456784"),
    )
    tool = shop(store)

    without = await tool.get_order_status(on_call(), str(order.number))
    wrong = await tool.get_order_status(on_call(), str(order.number), email="ana@example.com")
    right = await tool.get_order_status(on_call(), f"#{order.number}", email="Bo@Example.com ")

    assert without == wrong == {"found": False, "answer": NOT_FOUND}
    assert right["answer"] == (
        f"Order #{order.number} is on its way with UPS, tracking number ending in 6784."
    )


async def test_a_return_needs_a_verified_order_and_names_the_item(store: ShopifyStandIn) -> None:
    order = store.add_order(
        email="ana@example.com",
        phone=CALLER,
        items=["Blue sweater", "Wool socks"],
        shipped_with=("USPS", "9400100000000000000000"),
        delivered=True,
    )
    tool = shop(store)

    early = await tool.start_return(on_call(), str(order.number), "sweater", "too_small")
    assert early["started"] is False
    assert not store.returns

    looked_up = await tool.get_order_status(on_call(), str(order.number))
    assert looked_up["answer"] == (
        f"Order #{order.number} was delivered with USPS, tracking number ending in 0000."
    )
    vague = await tool.start_return(on_call(), str(order.number), "the gift", "unwanted")
    assert vague["answer"] == "Which item should go back? The order has: Blue sweater, Wool socks."
    started = await tool.start_return(on_call(), str(order.number), "blue sweater", "too_small")
    again = await tool.start_return(on_call(), str(order.number), "blue sweater", "too_small")

    assert started["started"] is True
    assert started["return"] == f"#{order.number}-R1"
    [created] = store.returns
    assert created.line_items[0]["line_item_id"] == order.items[0]["id"]
    assert created.line_items[0]["return_reason"] == "SIZE_TOO_SMALL"
    assert again["started"] is False


def test_a_few_matching_digits_do_not_prove_an_order_is_yours() -> None:
    order = {"phone": "+14155550123", "email": "ana@example.com"}
    assert belongs_to(order, ["(415) 555-0123"], None) is False  # country code missing
    assert belongs_to(order, ["+1 415 555 0123"], None) is True
    assert belongs_to(order, ["0123"], None) is False
    assert belongs_to(order, [], None) is False


def test_the_functions_declare_their_flags() -> None:
    specs = {spec.name: spec for spec in function_specs(Shop)}
    assert specs["get_order_status"].idempotent
    assert specs["get_order_status"].redact_arguments == ["email", "phone"]
    assert not specs["start_return"].idempotent
    assert specs["start_return"].parameters["required"] == ["order_number", "line_item", "reason"]


@pytest.fixture
async def moved_shop(store: ShopifyStandIn) -> AsyncIterator[str]:
    """A shop URL whose every answer is a redirect to another origin (the store, another port)."""

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(store.origin + request.path_qs)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_the_access_token_does_not_follow_a_redirect_to_another_origin(
    store: ShopifyStandIn, moved_shop: str
) -> None:
    tool = Shop(
        config={"shop_url": moved_shop, "network_allowlist": ["127.0.0.1/32"]},
        credentials=ToolCredentials(
            agent_tool_id="at-shop", kind="api_key", secrets={"api_key": TOKEN}
        ),
    )

    # httpx strips only `Authorization` on such a redirect, not X-Shopify-Access-Token.
    with pytest.raises(RequestRefused):
        await tool.get_order_status(on_call(), "1001")

    assert store.requests == []
