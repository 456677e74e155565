"""Planted secrets — an API key, OAuth access and refresh tokens, the OAuth client secret — go
through every path tool-vault has (store, release, denials, connect, refresh, failed refresh)
and then are looked for everywhere tool-vault writes: its logs, its NATS events, its REST
responses and the bytes of its replies on the bus. They must be found nowhere.

(The registry's database dump is the registry's own test; tool-vault never writes there.)"""

from __future__ import annotations

import io
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar
from nats.aio.client import Client as NatsClient

from voiceagents.contracts.toolvault import TOOLVAULT_STREAM
from voiceagents.toolvault.app import ROUTES, ToolVault

from .conftest import PUBLIC_BASE_URL, Agents, Worker, binding, put_secrets, sign_grant
from .oauth_standin import OAuthProviderStandIn
from .test_oauth import CALLBACK, start

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(toolvault: ToolVault) -> AsyncIterator[httpx.AsyncClient]:
    app = Litestar(route_handlers=ROUTES, openapi_config=None)
    app.state.toolvault = toolvault
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_BASE_URL) as client:
        yield client


async def test_planted_secrets_appear_in_no_log_event_or_response(
    agents: Agents,
    registry: NatsClient,
    worker: Worker,
    nats_ops: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    log_output: io.StringIO,
) -> None:
    api_key = "PLANTED-API-KEY-" + secrets.token_hex(12)
    crm, calendar = binding("api_key"), binding("oauth2", "google_calendar")
    agent = await agents.create(tools=[crm, calendar])
    responses: list[httpx.Response] = []
    replies: list[bytes] = []

    # API key stored and released; a grant for another org denied; an unbound tool refused.
    assert (await put_secrets(registry, agent, crm.agent_tool_id, {"api_key": api_key})).version
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id)
    await worker.request(grant, [crm.agent_tool_id, "at-unbound"])
    replies.append(worker.last_raw_reply)
    await worker.request(sign_grant(org_id="org-x", agent_id=agent.agent_id), [crm.agent_tool_id])
    replies.append(worker.last_raw_reply)

    # OAuth: a connect with an expiring token, a reused callback, a refresh, a failed refresh.
    oauth_provider.access_token_seconds = 60
    reply = await start(registry, agent, calendar)
    assert reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)
    responses.append(await http.get(CALLBACK, params={"code": code, "state": state}))
    responses.append(await http.get(CALLBACK, params={"code": code, "state": state}))
    await worker.request(grant, [calendar.agent_tool_id])  # refreshes
    replies.append(worker.last_raw_reply)
    oauth_provider.fail_refresh = True
    await worker.request(grant, [calendar.agent_tool_id])  # still expiring: refresh fails
    replies.append(worker.last_raw_reply)
    for path in ("/healthz", "/readyz", "/metrics"):
        responses.append(await http.get(path))
    await toolvault.audit.drain(timeout=10)

    planted = [
        api_key,
        oauth_provider.client_secret,
        code,
        *oauth_provider.issued_access_tokens,
        *oauth_provider.issued_refresh_tokens,
    ]
    assert len(oauth_provider.issued_access_tokens) == 2  # connect + one successful refresh

    logs = log_output.getvalue()
    assert "credentials released" in logs  # the logs were captured
    js = nats_ops.jetstream()
    info = await js.stream_info(TOOLVAULT_STREAM)
    events = [
        (await js.get_msg(TOOLVAULT_STREAM, seq)).data or b""
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]
    ours = [e for e in events if agent.org_id.encode() in e]
    assert len(ours) >= 5
    http_text = [r.text + str(dict(r.headers)) for r in responses]

    for value in planted:
        assert value not in logs
        assert all(value.encode() not in event for event in events)
        assert all(value not in text for text in http_text)
        assert all(value.encode() not in reply for reply in replies)
