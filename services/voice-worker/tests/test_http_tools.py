"""Declarative HTTP tools: the model gets the registry's schema as is, and one executor fills
the request from the arguments, the agent tool's config and the call's credentials — through
the SSRF guard, which only the agent tool's own allowlist opens."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web

from voiceagents.contracts.agents import ToolBinding
from voiceagents.contracts.calls import ToolInvoked
from voiceagents.contracts.tools import HttpRequestTemplate, ToolFunctionSpec
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.offline_model import OfflineScript, ScriptToolCall, ScriptTurn
from voiceagents.worker.tools.execution import (
    FAILED_SENTENCE,
    FunctionBinding,
    ToolInvocation,
    ToolRunner,
)
from voiceagents.worker.tools.http import HttpToolExecutor
from voiceagents.worker.tools.ssrf import GuardedTransport, IPAddress, guarded_client
from voiceagents.worker.tools.toolbox import build_call_tools

pytestmark = pytest.mark.unit

PARAMETERS = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "description": "Product code"},
        "quantity": {"type": "integer"},
    },
    "required": ["sku"],
}


@pytest.fixture
async def stock_api() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(
            {
                "path": request.raw_path,
                "authorization": request.headers.get("Authorization"),
                "body": await request.json() if request.can_read_body else None,
            }
        )
        return web.json_response({"in_stock": 3})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def stock_binding(base_url: str, allowlist: list[str] | None = None) -> ToolBinding:
    config: dict[str, Any] = {"base_url": base_url, "warehouse": "north"}
    if allowlist is not None:
        config["network_allowlist"] = allowlist
    return ToolBinding(
        agent_tool_id="at-stock",
        tool_name="stock",
        kind="http",
        auth_type="oauth2",
        config=config,
        functions=[
            ToolFunctionSpec(
                name="check_stock",
                description="How many of a product are in stock.",
                parameters=PARAMETERS,
                idempotent=True,
                http=HttpRequestTemplate(
                    method="POST",
                    url_template="{config.base_url}/stock/{sku}?warehouse={config.warehouse}",
                    body_template={"sku": "{sku}", "quantity": "{quantity}", "note": "for {sku}"},
                ),
            )
        ],
    )


async def test_an_http_function_is_a_raw_schema_tool_filled_from_arguments_config_and_token(
    stock_api: tuple[str, list[dict[str, Any]]],
) -> None:
    base_url, seen = stock_api
    credentials = ToolCredentials(agent_tool_id="at-stock", kind="oauth2", access_token="tok-1")
    async with guarded_client() as client:
        tools = build_call_tools(
            # The stand-in API is on loopback: this agent tool's allowlist opens the guard.
            [stock_binding(base_url, allowlist=["127.0.0.1/32"])],
            {},
            {"at-stock": credentials},
            {},
            ToolRunner(report=lambda _: None),
            HttpToolExecutor(client),
        )
        (tool,) = tools.tools
        assert tool.info.raw_schema == {
            "name": "check_stock",
            "description": "How many of a product are in stock.",
            "parameters": PARAMETERS,
        }

        result = await tool(raw_arguments={"sku": "A/1", "quantity": 2}, context=None)

    assert json.loads(result) == {"in_stock": 3}
    assert seen == [
        {
            # The argument stays one path segment; the config adds the query.
            "path": "/stock/A%2F1?warehouse=north",
            "authorization": "Bearer tok-1",
            "body": {"sku": "A/1", "quantity": 2, "note": "for A/1"},
        }
    ]


STOCK_SCRIPT = OfflineScript(
    turns=[
        ScriptTurn(
            when="stock",
            tool_calls=[ScriptToolCall(name="check_stock", arguments={"sku": "A1", "quantity": 1})],
            after_tools="{result}",
        )
    ]
)


@pytest.mark.parametrize("target", ["loopback", "metadata"])
async def test_a_declarative_tool_aimed_inside_without_an_allowlist_is_refused_and_said(
    stock_api: tuple[str, list[dict[str, Any]]],
    text_call: Any,
    make_config: Any,
    target: str,
) -> None:
    base_url, seen = stock_api
    if target == "metadata":
        base_url = "http://169.254.169.254/latest/meta-data"
    # A public API needing no key; what the guard checks is where the URL points.
    config = make_config(tools=[msgspec.structs.replace(stock_binding(base_url), auth_type="none")])
    async with guarded_client() as client:
        call = await text_call(STOCK_SCRIPT, config, http=HttpToolExecutor(client))

        result = await call.session.run(user_input="Is A1 in stock?")

    spoken = [
        e.item.text_content
        for e in result.events
        if e.type == "message" and e.item.role == "assistant"
    ]
    assert spoken == [FAILED_SENTENCE]
    assert seen == []
    (event,) = [e for e in call.published if isinstance(e, ToolInvoked)]
    # Refused once, not retried, although the function is a read.
    assert (event.function, event.outcome, event.error) == (
        "check_stock",
        "refused",
        "RequestRefused",
    )


@pytest.fixture
async def chatty_api() -> AsyncIterator[str]:
    """An API that answers far more than a caller should hear."""

    async def catalog(request: web.Request) -> web.Response:
        items = [{"sku": f"S{i}", "description": "x" * 2000} for i in range(100)]
        return web.json_response({"items": items, "count": 100})

    async def dump(request: web.Request) -> web.StreamResponse:
        # Chunked, no Content-Length: the cap must hold while reading.
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"y" * 8192)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stock/catalog", catalog)
    app.router.add_get("/stock/dump", dump)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def get_function(path: str) -> ToolFunctionSpec:
    return ToolFunctionSpec(
        name="check_stock",
        description="Stock.",
        parameters={"type": "object", "properties": {}},
        http=HttpRequestTemplate(method="GET", url_template="{config.base_url}" + path),
    )


async def test_a_large_json_answer_is_trimmed_to_what_the_model_can_speak(
    chatty_api: str,
) -> None:
    config = {"base_url": chatty_api, "network_allowlist": ["127.0.0.1/32"]}
    async with guarded_client() as client:
        answer = await HttpToolExecutor(client).execute(
            get_function("/stock/catalog"), config, None, {}
        )

    assert answer["count"] == 100
    assert len(answer["items"]) == 11
    assert answer["items"][-1] == "(90 more not shown)"
    assert answer["items"][0]["description"] == "x" * 500 + "…"
    assert len(json.dumps(answer)) < 10_000


async def test_an_oversized_answer_is_refused_unread_and_the_agent_says_so(
    chatty_api: str, text_call: Any, make_config: Any
) -> None:
    binding = ToolBinding(
        agent_tool_id="at-stock",
        tool_name="stock",
        kind="http",
        config={"base_url": chatty_api, "network_allowlist": ["127.0.0.1/32"]},
        functions=[get_function("/stock/dump")],
    )
    script = OfflineScript(
        turns=[
            ScriptTurn(
                when="stock",
                tool_calls=[ScriptToolCall(name="check_stock", arguments={})],
                after_tools="{result}",
            )
        ]
    )
    async with guarded_client() as client:
        call = await text_call(script, make_config(tools=[binding]), http=HttpToolExecutor(client))
        result = await call.session.run(user_input="What is in stock?")

    spoken = [
        e.item.text_content
        for e in result.events
        if e.type == "message" and e.item.role == "assistant"
    ]
    assert spoken == [FAILED_SENTENCE]
    (event,) = [e for e in call.published if isinstance(e, ToolInvoked)]
    assert (event.outcome, event.error) == ("error", "ResponseTooLarge")


class PublicDns:
    """Every name is one public address: only the URL the executor built decides the request."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34")]


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[HttpToolExecutor, list[httpx.Request]]]:
    """The executor on the SSRF guard, the network replaced by a recorder that answers 200."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    transport = GuardedTransport(resolver=PublicDns(), inner=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:
        yield HttpToolExecutor(client), seen


def orders(url_template: str, parameter: str) -> ToolFunctionSpec:
    return ToolFunctionSpec(
        name="orders",
        description="A customer's orders.",
        parameters={
            "type": "object",
            "properties": {parameter: {"type": "string"}},
            "required": [parameter],
        },
        http=HttpRequestTemplate(method="GET", url_template=url_template),
    )


@pytest.mark.parametrize(
    ("url_template", "argument", "host", "path"),
    [
        (
            "https://{customer.id}.api.example.com/orders",
            "evil.example.net/x?",
            "evil.example.net%2fx%3f.api.example.com",
            "/orders",
        ),
        (
            "https://api.example.com/customers/{customer.id}/orders",
            "7/../../admin/users?all=1&",
            "api.example.com",
            "/customers/7%2F..%2F..%2Fadmin%2Fusers%3Fall%3D1%26/orders",
        ),
    ],
)
async def test_a_model_argument_named_with_a_dot_is_still_encoded(
    recorded: tuple[HttpToolExecutor, list[httpx.Request]],
    url_template: str,
    argument: str,
    host: str,
    path: str,
) -> None:
    executor, seen = recorded
    credentials = ToolCredentials(agent_tool_id="at-orders", kind="oauth2", access_token="tok-1")

    await executor.execute(
        orders(url_template, "customer.id"), {}, credentials, {"customer.id": argument}
    )

    # The bearer token goes only where the admin's template points.
    [request] = seen
    assert (request.headers["host"], request.url.raw_path.decode()) == (host, path)


@pytest.mark.parametrize("argument", [".", "..", ""])
async def test_a_path_argument_naming_another_resource_is_refused(
    recorded: tuple[HttpToolExecutor, list[httpx.Request]], argument: str
) -> None:
    executor, seen = recorded
    reports: list[ToolInvocation] = []
    runner = ToolRunner(report=reports.append)
    binding = FunctionBinding(tool_name="orders", agent_tool_id="at-orders", function="orders")
    spec = orders("https://api.example.com/orders/{id}", "id")

    # httpx would send "/orders/.." as "/", and "/orders/" is the whole collection: other
    # resources than the one the template names.
    result = await runner.run(
        binding, None, {"id": argument}, lambda: executor.execute(spec, {}, None, {"id": argument})
    )

    assert seen == []
    assert json.loads(result)["say_to_caller"] == FAILED_SENTENCE
    [report] = reports
    assert report.outcome == "refused"


async def test_an_empty_argument_in_the_query_is_sent(
    recorded: tuple[HttpToolExecutor, list[httpx.Request]],
) -> None:
    executor, seen = recorded

    await executor.execute(
        orders("https://api.example.com/orders?name={name}", "name"), {}, None, {"name": ""}
    )

    [request] = seen
    assert request.url.raw_path.decode() == "/orders?name="
