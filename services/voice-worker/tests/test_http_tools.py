"""Declarative HTTP tools: the model gets the registry's schema as is, and one executor fills
the request from the arguments, the agent tool's config and the call's credentials."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from voiceagents.contracts.agents import ToolBinding
from voiceagents.contracts.tools import HttpRequestTemplate, ToolFunctionSpec
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.execution import ToolRunner
from voiceagents.worker.tools.http import HttpToolExecutor, RequestRefused
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


def stock_binding(base_url: str) -> ToolBinding:
    return ToolBinding(
        agent_tool_id="at-stock",
        tool_name="stock",
        kind="http",
        auth_type="oauth2",
        config={"base_url": base_url, "warehouse": "north"},
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
    async with httpx.AsyncClient() as client:
        executor = HttpToolExecutor(client, _AllowLoopback())
        tools = build_call_tools(
            [stock_binding(base_url)],
            {},
            {"at-stock": credentials},
            {},
            ToolRunner(report=lambda _: None),
            executor,
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


async def test_the_request_policy_can_refuse_a_destination(
    stock_api: tuple[str, list[dict[str, Any]]],
) -> None:
    base_url, seen = stock_api

    class RefuseAll:
        async def check(self, request: httpx.Request) -> None:
            raise RequestRefused(str(request.url.host))

    async with httpx.AsyncClient() as client:
        tools = build_call_tools(
            [stock_binding(base_url)],
            {},
            {},
            {},
            ToolRunner(report=lambda _: None),
            HttpToolExecutor(client, RefuseAll()),
        )
        result = await tools.tools[0](raw_arguments={"sku": "A1"}, context=None)

    assert json.loads(result)["error"] == "error"
    assert seen == []


class _AllowLoopback:
    async def check(self, request: httpx.Request) -> None:
        if request.url.host != "127.0.0.1":
            raise RequestRefused(str(request.url.host))
