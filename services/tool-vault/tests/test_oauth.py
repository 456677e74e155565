"""Connecting a tool by OAuth (RFC 6749 + PKCE, per RFC 9700) and keeping it connected: the
authorization URL, the callback, and refresh on release. The provider is a local stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar import Litestar
from nats.aio.client import Client as NatsClient

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.toolvault import (
    OAUTH_START_SUBJECT,
    CredentialConnected,
    CredentialRefreshed,
    CredentialRefreshFailed,
    CredentialsReleased,
    OAuthStartReply,
    OAuthStartRequest,
)
from voiceagents.toolvault import oauth as oauth_flows
from voiceagents.toolvault.app import ROUTES, ToolVault
from voiceagents.toolvault.oauth import OAuthFlows, load_providers
from voiceagents.toolvault.store import StoreError, ToolSecret, Versioned, tool_path

from .conftest import (
    ADMIN_ORIGIN,
    PUBLIC_BASE_URL,
    Agents,
    Worker,
    audit_events,
    binding,
    sign_grant,
)
from .oauth_standin import OAuthProviderStandIn

pytestmark = pytest.mark.integration

SCOPES = [
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events",
]
CALLBACK = "/api/v1/tools/callback"


@pytest.fixture
async def http(toolvault: ToolVault) -> AsyncIterator[httpx.AsyncClient]:
    """tool-vault's HTTP routes on the test's own event loop (the store's pool lives there)."""
    app = Litestar(route_handlers=ROUTES, openapi_config=None)
    app.state.toolvault = toolvault
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_BASE_URL) as client:
        yield client


async def start(
    registry: NatsClient, agent: AgentRuntimeConfig, tool: ToolBinding, **fields: object
) -> OAuthStartReply:
    request = OAuthStartRequest(
        org_id=agent.org_id,
        agent_id=agent.agent_id,
        agent_tool_id=tool.agent_tool_id,
        tool_name=tool.tool_name,
        provider=str(fields.pop("provider", "google")),
        scopes=SCOPES,
        **fields,  # type: ignore[arg-type]
    )
    message = await registry.request(OAUTH_START_SUBJECT, encode(request), timeout=10)
    return decode(message.data, OAuthStartReply)


async def connected_agent(agents: Agents) -> tuple[AgentRuntimeConfig, ToolBinding]:
    calendar = binding("oauth2", "google_calendar")
    return await agents.create(tools=[calendar]), calendar


async def stored(
    toolvault: ToolVault, agent: AgentRuntimeConfig, tool: ToolBinding
) -> ToolSecret | None:
    found = await toolvault.store.read(tool_path(agent.org_id, tool.agent_tool_id))
    return None if found is None else decode(found.value, ToolSecret)


async def test_the_authorization_url_asks_for_the_tools_scopes_offline_with_pkce_s256(
    agents: Agents, registry: NatsClient, oauth_provider: OAuthProviderStandIn
) -> None:
    agent, calendar = await connected_agent(agents)

    reply = await start(registry, agent, calendar)

    assert reply.error is None and reply.authorization_url is not None
    url = urlsplit(reply.authorization_url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{oauth_provider.url}/authorize"
    assert query["response_type"] == "code"
    assert query["client_id"] == oauth_provider.client_id
    assert query["redirect_uri"] == PUBLIC_BASE_URL + CALLBACK
    assert query["scope"].split() == SCOPES
    assert query["access_type"] == "offline"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43
    assert "code_verifier" not in query


async def test_an_unknown_provider_is_refused_by_name(agents: Agents, registry: NatsClient) -> None:
    agent, calendar = await connected_agent(agents)

    reply = await start(registry, agent, calendar, provider="myspace")

    assert reply.authorization_url is None
    assert reply.error is not None and "provider" in reply.error and "myspace" in reply.error


async def test_connecting_stores_tokens_announces_it_and_the_next_call_gets_the_token(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    worker: Worker,
    nats_ops: NatsClient,
    toolvault: ToolVault,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar, return_url=f"{ADMIN_ORIGIN}/tools")
    assert reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)

    answer = await http.get(CALLBACK, params={"code": code, "state": state})

    assert answer.status_code in (302, 303, 307)
    assert answer.headers["location"] == (
        f"https://admin.example.com/tools?agent_tool_id={calendar.agent_tool_id}&connected=true"
    )
    secret = await stored(toolvault, agent, calendar)
    assert secret is not None
    assert secret.access_token == oauth_provider.issued_access_tokens[-1]
    assert secret.refresh_token == oauth_provider.issued_refresh_tokens[-1]
    [event] = await audit_events(nats_ops, agent.org_id, 1)
    assert isinstance(event, CredentialConnected)
    assert (event.agent_tool_id, event.agent_id, event.provider) == (
        calendar.agent_tool_id,
        agent.agent_id,
        "google",
    )

    release = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [calendar.agent_tool_id]
    )
    [credentials] = worker.open(release).credentials
    assert credentials.kind == "oauth2"
    assert credentials.access_token == oauth_provider.issued_access_tokens[-1]
    assert oauth_provider.refresh_calls == 0


async def test_a_reused_state_is_refused_as_reused_and_nothing_changes(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar)
    assert reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)

    async def delete_fails(path: str) -> None:
        raise StoreError("PostgreSQL delete failed")

    # Deleting a used state is best effort: here it fails, so the used state is still stored
    # and only its single-use mark stands between the replay and a second connect.
    monkeypatch.setattr(toolvault.store, "delete", delete_fails)
    assert (await http.get(CALLBACK, params={"code": code, "state": state})).status_code == 200
    first = await toolvault.store.read(tool_path(agent.org_id, calendar.agent_tool_id))
    issued = len(oauth_provider.issued_access_tokens)

    again = await http.get(CALLBACK, params={"code": code, "state": state})

    assert again.status_code == 400
    assert again.headers["content-type"].startswith("application/problem+json")
    assert (again.json()["title"], again.json()["field"]) == ("reused_state", "state")
    assert len(oauth_provider.issued_access_tokens) == issued
    assert await toolvault.store.read(tool_path(agent.org_id, calendar.agent_tool_id)) == first


async def test_of_two_concurrent_callbacks_with_one_state_exactly_one_connects(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar)
    assert reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)
    issued = len(oauth_provider.issued_access_tokens)
    # Both callbacks read the unused state before either marks it used (as two replicas can).
    both_read = asyncio.Barrier(2)
    read = toolvault.store.read

    async def read_together(path: str, *, cached: bool = False) -> Versioned | None:
        found = await read(path, cached=cached)
        if path.startswith("oauth-states/"):
            await both_read.wait()
        return found

    monkeypatch.setattr(toolvault.store, "read", read_together)

    answers = await asyncio.wait_for(
        asyncio.gather(
            http.get(CALLBACK, params={"code": code, "state": state}),
            http.get(CALLBACK, params={"code": code, "state": state}),
        ),
        timeout=15,
    )

    assert sorted(a.status_code for a in answers) == [200, 400]
    [refused] = [a for a in answers if a.status_code == 400]
    assert refused.json()["title"] == "reused_state"
    assert len(oauth_provider.issued_access_tokens) == issued + 1
    assert (await stored(toolvault, agent, calendar)) is not None


@pytest.mark.parametrize(
    "return_url",
    [
        "https://evil.example.net/tools",
        "//evil.example.net/tools",
        "/\\evil.example.net/tools",
        "/\t/evil.example.net/tools",
        "https://admin.example.com@evil.example.net/tools",
        "https://admin.example.com.evil.example.net/tools",
        "http://admin.example.com/tools",
        "https://admin.example.com:8443/tools",
        "http://127.0.0.1:8091/tools",
        "javascript:alert(1)",
        "tools",
    ],
)
async def test_a_return_url_off_the_allowed_origins_is_refused_by_name(
    agents: Agents, registry: NatsClient, return_url: str
) -> None:
    agent, calendar = await connected_agent(agents)

    reply = await start(registry, agent, calendar, return_url=return_url)

    assert reply.authorization_url is None
    assert reply.error is not None and reply.error.startswith("return_url:")


@pytest.mark.parametrize(
    ("return_url", "location"),
    [
        ("/tools?tab=calendar", "/tools?tab=calendar&"),
        (f"{PUBLIC_BASE_URL}/done", f"{PUBLIC_BASE_URL}/done?"),
        (f"{ADMIN_ORIGIN}:443/tools", f"{ADMIN_ORIGIN}:443/tools?"),
    ],
)
async def test_a_path_or_a_url_on_an_allowed_origin_is_where_the_callback_returns(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    return_url: str,
    location: str,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar, return_url=return_url)
    assert reply.error is None and reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)

    answer = await http.get(CALLBACK, params={"code": code, "state": state})

    assert answer.status_code in (302, 303, 307)
    assert answer.headers["location"] == (
        f"{location}agent_tool_id={calendar.agent_tool_id}&connected=true"
    )


async def test_the_callback_does_not_send_the_browser_to_an_origin_no_longer_allowed(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar, return_url=f"{ADMIN_ORIGIN}/tools")
    assert reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)
    # The admin took the origin off the list (a restart) while this authorization was pending.
    monkeypatch.setattr(toolvault.oauth, "_return_origins", frozenset())

    answer = await http.get(CALLBACK, params={"code": code, "state": state})

    assert "location" not in answer.headers
    assert answer.status_code == 200
    assert answer.json() == {
        "connected": True,
        "agent_tool_id": calendar.agent_tool_id,
        "tool": calendar.tool_name,
    }


async def test_an_unknown_state_is_refused_and_nothing_is_stored(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar)
    assert reply.authorization_url is not None
    code, _ = oauth_provider.consent(reply.authorization_url)

    for params in ({"code": code, "state": "made-up-state"}, {"code": code}):
        answer = await http.get(CALLBACK, params=params)
        assert answer.status_code == 400
        assert answer.json()["title"] == "unknown_state"
    assert await stored(toolvault, agent, calendar) is None


async def test_an_expired_state_is_refused_and_nothing_is_stored(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar)
    assert reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)

    monkeypatch.setattr(toolvault.oauth, "_clock", lambda: time.time() + 601)
    answer = await http.get(CALLBACK, params={"code": code, "state": state})

    assert answer.status_code == 400
    assert answer.json()["title"] == "expired_state"
    assert await stored(toolvault, agent, calendar) is None


async def test_a_code_from_another_authorization_fails_pkce_and_nothing_is_stored(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
) -> None:
    # Code injection: a code obtained for authorization A is replayed with B's state, so the
    # token endpoint sees B's verifier against A's challenge.
    agent, calendar = await connected_agent(agents)
    first = await start(registry, agent, calendar)
    second = await start(registry, agent, calendar)
    assert first.authorization_url is not None and second.authorization_url is not None
    code_a, _ = oauth_provider.consent(first.authorization_url)
    _, state_b = oauth_provider.consent(second.authorization_url)

    answer = await http.get(CALLBACK, params={"code": code_a, "state": state_b})

    assert answer.status_code == 400
    assert answer.json()["title"] == "invalid_grant"
    assert await stored(toolvault, agent, calendar) is None


async def test_a_denied_consent_stores_nothing(
    agents: Agents,
    registry: NatsClient,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
) -> None:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar)
    assert reply.authorization_url is not None
    state = parse_qs(urlsplit(reply.authorization_url).query)["state"][0]

    answer = await http.get(CALLBACK, params={"error": "access_denied", "state": state})

    assert answer.status_code == 400
    assert answer.json()["title"] == "authorization_denied"
    assert await stored(toolvault, agent, calendar) is None


async def connect(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
) -> tuple[AgentRuntimeConfig, ToolBinding]:
    agent, calendar = await connected_agent(agents)
    reply = await start(registry, agent, calendar)
    assert reply.authorization_url is not None
    code, state = oauth_provider.consent(reply.authorization_url)
    assert (await http.get(CALLBACK, params={"code": code, "state": state})).status_code == 200
    return agent, calendar


async def connect_expiring(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
) -> tuple[AgentRuntimeConfig, ToolBinding, str, Versioned]:
    """Connected with an access token inside the 5-minute refresh margin, so the next release
    refreshes it; the provider's next tokens live an hour. Also the tool's secret path and what
    is stored there now."""
    oauth_provider.access_token_seconds = 60
    agent, calendar = await connect(agents, registry, oauth_provider, http)
    path = tool_path(agent.org_id, calendar.agent_tool_id)
    stored_now = await toolvault.store.read(path)
    assert stored_now is not None
    oauth_provider.access_token_seconds = 3600
    return agent, calendar, path, stored_now


async def test_concurrent_releases_of_an_expiring_token_refresh_it_once(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    nats_server: object,
    worker: Worker,
    nats_ops: NatsClient,
) -> None:
    agent, calendar, path, before = await connect_expiring(
        agents, registry, oauth_provider, http, toolvault
    )
    old_refresh = oauth_provider.issued_refresh_tokens[-1]

    other = Worker(worker.nats)
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id)
    first, second = await asyncio.gather(
        worker.request(grant, [calendar.agent_tool_id]),
        other.request(grant, [calendar.agent_tool_id]),
    )

    assert oauth_provider.refresh_calls == 1
    after = await toolvault.store.read(path)
    assert after is not None and after.version == before.version + 1
    secret = decode(after.value, ToolSecret)
    assert secret.refresh_token == oauth_provider.issued_refresh_tokens[-1] != old_refresh
    fresh = oauth_provider.issued_access_tokens[-1]
    assert worker.open(first).credentials[0].access_token == fresh
    assert other.open(second).credentials[0].access_token == fresh
    events = await audit_events(nats_ops, agent.org_id, 4)
    assert sum(isinstance(e, CredentialRefreshed) for e in events) == 1


async def test_a_failed_refresh_says_refresh_failed_and_emits_an_event(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    worker: Worker,
    nats_ops: NatsClient,
) -> None:
    oauth_provider.access_token_seconds = 60
    agent, calendar = await connect(agents, registry, oauth_provider, http)
    oauth_provider.fail_refresh = True  # e.g. the user revoked access at Google

    reply = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [calendar.agent_tool_id]
    )

    assert reply.error is None
    assert [(e.agent_tool_id, e.code) for e in reply.tool_errors] == [
        (calendar.agent_tool_id, "refresh_failed")
    ]
    assert worker.open(reply).credentials == []
    events = await audit_events(nats_ops, agent.org_id, 3)
    failed = [e for e in events if isinstance(e, CredentialRefreshFailed)]
    assert [(e.agent_tool_id, e.reason) for e in failed] == [
        (calendar.agent_tool_id, "invalid_grant")
    ]
    released = [e for e in events if isinstance(e, CredentialsReleased)]
    assert released and released[0].error_code == "refresh_failed"


class WriteOutage:
    """The store refuses every write (reads still work) until `end`; `refused` holds the
    check-and-set version of each refused write. The keeper retries every 50 ms."""

    def __init__(self, toolvault: ToolVault, monkeypatch: pytest.MonkeyPatch) -> None:
        self._store = toolvault.store
        self._write = toolvault.store.write
        self.down = True
        self.refused: list[int] = []
        monkeypatch.setattr(oauth_flows, "STORE_RETRY_SECONDS", (0.05,))
        monkeypatch.setattr(toolvault.store, "write", self.write)

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        if self.down:
            self.refused.append(cas)
            raise StoreError("PostgreSQL write failed: ConnectionDoesNotExistError")
        return await self._write(path, value, cas=cas)

    async def end(self, path: str, before: Versioned) -> Versioned:
        """Writes work again; what the store holds once the keeper has written over `before`."""
        self.down = False
        async with asyncio.timeout(10):
            while (after := await self._store.read(path)) == before:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert after is not None
        return after


async def test_refreshed_tokens_the_store_does_not_take_are_kept_until_it_does(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    worker: Worker,
    nats_ops: NatsClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The provider rotates refresh tokens: once it has answered, the stored one is spent.
    agent, calendar, path, before = await connect_expiring(
        agents, registry, oauth_provider, http, toolvault
    )
    outage = WriteOutage(toolvault, monkeypatch)
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id)

    first = await worker.request(grant, [calendar.agent_tool_id])
    [first_credentials] = worker.open(first).credentials
    async with asyncio.timeout(10):
        while len(outage.refused) < 4:  # the keeper keeps trying  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    second = await worker.request(grant, [calendar.agent_tool_id])
    [second_credentials] = worker.open(second).credentials

    # Both releases get the refreshed token from memory; the provider was asked once.
    fresh = oauth_provider.issued_access_tokens[-1]
    assert first.tool_errors == [] and second.tool_errors == []
    assert first_credentials.access_token == second_credentials.access_token == fresh
    assert oauth_provider.refresh_calls == 1
    assert await toolvault.store.read(path) == before

    after = await outage.end(path, before)
    assert after.version == before.version + 1
    secret = decode(after.value, ToolSecret)
    assert secret.refresh_token == oauth_provider.issued_refresh_tokens[-1]
    assert secret.access_token == fresh
    assert set(outage.refused) == {before.version}
    events = await audit_events(nats_ops, agent.org_id, 4)  # connected, 2 released, refreshed
    assert sum(isinstance(e, CredentialRefreshed) for e in events) == 1


async def test_a_refresh_of_tokens_the_store_has_not_taken_uses_them_and_replaces_them(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    worker: Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, calendar, path, before = await connect_expiring(
        agents, registry, oauth_provider, http, toolvault
    )
    oauth_provider.access_token_seconds = 60  # every release refreshes
    outage = WriteOutage(toolvault, monkeypatch)
    grant = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id)

    first = await worker.request(grant, [calendar.agent_tool_id])
    second = await worker.request(grant, [calendar.agent_tool_id])

    # The second refresh used the first one's rotated refresh token (the stored one is spent:
    # the stand-in would have said invalid_grant).
    assert first.tool_errors == [] and second.tool_errors == []
    assert oauth_provider.refresh_calls == 2
    [credentials] = worker.open(second).credentials
    assert credentials.access_token == oauth_provider.issued_access_tokens[-1]
    after = await outage.end(path, before)
    assert after.version == before.version + 1
    secret = decode(after.value, ToolSecret)
    assert secret.refresh_token == oauth_provider.issued_refresh_tokens[-1]
    assert secret.access_token == oauth_provider.issued_access_tokens[-1]


async def test_a_refresh_write_that_landed_despite_an_error_is_not_written_again(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    worker: Worker,
    nats_ops: NatsClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, calendar, path, before = await connect_expiring(
        agents, registry, oauth_provider, http, toolvault
    )
    write = toolvault.store.write
    writes: list[int] = []

    async def write_then_lose_the_answer(path: str, value: bytes, *, cas: int) -> int:
        writes.append(cas)
        version = await write(path, value, cas=cas)
        if len(writes) == 1:
            raise StoreError("PostgreSQL connection lost after COMMIT")
        return version

    monkeypatch.setattr(toolvault.store, "write", write_then_lose_the_answer)

    reply = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [calendar.agent_tool_id]
    )

    [credentials] = worker.open(reply).credentials
    assert credentials.access_token == oauth_provider.issued_access_tokens[-1]
    # The keeper reads before it writes again: it finds the write landed, and says refreshed.
    events = await audit_events(nats_ops, agent.org_id, 3)  # connected, released, refreshed
    assert sum(isinstance(e, CredentialRefreshed) for e in events) == 1
    assert writes == [before.version]
    after = await toolvault.store.read(path)
    assert after is not None and after.version == before.version + 1
    assert decode(after.value, ToolSecret).refresh_token == oauth_provider.issued_refresh_tokens[-1]


async def test_invalid_grant_after_another_replica_refreshed_takes_its_tokens(
    agents: Agents,
    registry: NatsClient,
    oauth_provider: OAuthProviderStandIn,
    http: httpx.AsyncClient,
    toolvault: ToolVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, path, stale = await connect_expiring(agents, registry, oauth_provider, http, toolvault)
    # Another replica, on the same store, refreshes between this replica's read and its call to
    # the provider: the refresh token this replica then sends is already spent.
    other = OAuthFlows(
        toolvault.store._backend,
        load_providers({"google": oauth_provider.provider_config()}),
        PUBLIC_BASE_URL + CALLBACK,
    )
    read = toolvault.store.read

    async def read_then_other_replica_refreshes(path: str, *, cached: bool = False) -> Versioned:
        found = await read(path, cached=cached)
        assert found is not None
        monkeypatch.setattr(toolvault.store, "read", read)
        await other.fresh(path, found, decode(found.value, ToolSecret))
        return found

    monkeypatch.setattr(toolvault.store, "read", read_then_other_replica_refreshes)
    failures: list[str] = []
    monkeypatch.setattr(toolvault.oauth, "on_refresh_failed", lambda _s, r: failures.append(r))

    secret = await toolvault.oauth.fresh(path, stale, decode(stale.value, ToolSecret))

    assert oauth_provider.refresh_calls == 2  # the other replica's, then this one's (refused)
    assert failures == []
    assert secret.access_token == oauth_provider.issued_access_tokens[-1]
    assert secret.refresh_token == oauth_provider.issued_refresh_tokens[-1]
