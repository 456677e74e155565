"""The SSRF guard: a tool cannot be aimed at the worker's own network, by URL, by DNS or by a
redirect, unless the agent tool's allowlist says so; the cloud metadata service never."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from voiceagents.contracts.tools import HttpRequestTemplate, ToolFunctionSpec
from voiceagents.worker.tools.execution import FunctionBinding, ToolRunner
from voiceagents.worker.tools.http import HttpToolExecutor
from voiceagents.worker.tools.ssrf import (
    Allowlist,
    IPAddress,
    RequestRefused,
    check_destination,
    guarded_client,
)

pytestmark = pytest.mark.unit


class FakeDns:
    """Answers from a table; never asks the network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        if host not in self.table:
            raise OSError(f"{host} not found")
        return [ipaddress.ip_address(a) for a in self.table[host]]


DNS = FakeDns(
    {
        "api.example.com": ["93.184.216.34"],
        "internal.example.com": ["10.0.0.5"],
        "sneaky.example.com": ["93.184.216.34", "127.0.0.1"],
        "metadata.google.internal": ["169.254.169.254"],
        "mapped.example.com": ["::ffff:127.0.0.1"],
        "standin.test": ["127.0.0.1"],
    }
)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    """A local API that answers JSON at /ok and redirects from /redirect?to=URL; records the
    Host header of each request it got."""
    hosts: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hosts.append(request.headers["Host"])
        return web.json_response({"ok": True})

    async def redirect(request: web.Request) -> web.Response:
        hosts.append(request.headers["Host"])
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"standin.test:{port}", hosts
    await runner.cleanup()


def http_function(url: str) -> ToolFunctionSpec:
    return ToolFunctionSpec(
        name="fetch",
        description="Fetch",
        parameters={"type": "object", "properties": {}},
        http=HttpRequestTemplate(method="GET", url_template=url),
    )


async def run_http_tool(url: str, config: dict[str, Any]) -> Any:
    """Run a declarative HTTP tool the way the worker does: its executor on the guarded client
    (the executor tags each request with its agent tool's allowlist)."""
    async with guarded_client(resolver=DNS) as client:
        return await HttpToolExecutor(client).execute(http_function(url), config, None, {})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/latest",
        "http://10.0.0.5/admin",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::1]:8080/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:10.0.0.5]/",
        "http://100.64.1.1/",
        "http://internal.example.com/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://sneaky.example.com/",
        "http://mapped.example.com/",
        "file:///etc/passwd",
    ],
)
async def test_a_declarative_tool_aimed_at_an_internal_address_is_refused(url: str) -> None:
    with pytest.raises(RequestRefused):
        await run_http_tool(url, {})


async def test_a_redirect_to_an_internal_address_is_refused(
    server: tuple[str, list[str]],
) -> None:
    host, hosts = server
    port = host.split(":")[1]
    config = {"network_allowlist": ["standin.test"]}
    for target in (
        f"http://127.0.0.1:{port}/ok",
        "http://10.0.0.5/",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
    ):
        with pytest.raises(RequestRefused):
            await run_http_tool(f"http://{host}/redirect?to={target}", config)
    # The first hop was allowed and reached the server; no refused hop did.
    assert hosts == [host] * 4


async def test_an_allowlisted_host_is_reached_at_the_address_that_was_checked(
    server: tuple[str, list[str]],
) -> None:
    host, hosts = server
    # "standin.test" exists only in the guard's resolver: the request arrives because the
    # connection goes to the pinned address, and the API still sees its own host name.
    result = await run_http_tool(f"http://{host}/ok", {"network_allowlist": ["standin.test"]})
    assert result == {"ok": True}
    assert hosts == [host]


async def test_an_allowlisted_network_opens_the_guard_for_that_network_only() -> None:
    allowlist = Allowlist.parse(["10.0.0.0/24"])
    assert str(await check_destination(httpx.URL("http://10.0.0.5/"), allowlist, DNS)) == (
        "10.0.0.5"
    )
    with pytest.raises(RequestRefused):
        await check_destination(httpx.URL("http://10.0.1.5/"), allowlist, DNS)


async def test_the_metadata_service_stays_refused_even_when_allowlisted() -> None:
    allowlist = Allowlist.parse(["169.254.0.0/16", "metadata.google.internal"])
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/"):
        with pytest.raises(RequestRefused, match="metadata"):
            await check_destination(httpx.URL(url), allowlist, DNS)


async def test_a_public_address_passes() -> None:
    address = await check_destination(httpx.URL("https://api.example.com/v1"), Allowlist(), DNS)
    assert str(address) == "93.184.216.34"


def test_a_bad_allowlist_entry_is_named() -> None:
    with pytest.raises(ValueError, match=r"network_allowlist: 'http://x/' is neither"):
        Allowlist.from_config({"network_allowlist": ["http://x/"]})


async def test_a_refused_request_becomes_a_sentence_for_the_caller() -> None:
    reports: list[Any] = []
    runner = ToolRunner(report=reports.append)
    binding = FunctionBinding(tool_name="internal", agent_tool_id="at-1", function="fetch")

    result = await runner.run(
        binding, None, {}, lambda: run_http_tool("http://169.254.169.254/", {})
    )

    assert "say_to_caller" in result
    assert "169.254" not in result
    assert (reports[0].outcome, reports[0].error) == ("refused", "RequestRefused")


async def test_a_redirect_is_followed_within_its_origin_only(
    server: tuple[str, list[str]],
) -> None:
    host, hosts = server
    port = host.split(":")[1]
    config = {"network_allowlist": ["standin.test", "127.0.0.1/32"]}

    same = await run_http_tool(f"http://{host}/redirect?to=/ok", config)
    # Another host, another port: the request's headers and body would go along.
    for target in (f"http://127.0.0.1:{port}/ok", f"http://standin.test:{int(port) + 1}/ok"):
        with pytest.raises(RequestRefused, match="another origin"):
            await run_http_tool(f"http://{host}/redirect?to={target}", config)

    assert same == {"ok": True}
    assert hosts == [host, host, host, host]
