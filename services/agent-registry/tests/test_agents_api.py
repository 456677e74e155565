"""Admins manage agents through the REST API: defaults, scoping, paging, versions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from voiceagents.registry.agents import AnswerFromMemory

from .conftest import RunningRegistry, new_number

pytestmark = pytest.mark.integration


async def test_a_new_agent_gets_the_default_greeting_and_is_readable(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    number = new_number()
    agent = await registry.agent(org, phone_number=number, max_concurrent_calls=3)
    assert agent["greeting"] == "Hello, this is {agent_name}. How can I help you today?"
    assert agent["version"] == 1
    assert agent["phone_number"] == number
    assert agent["is_active"] is True

    response = await registry.request("GET", f"/api/v1/agents/{agent['id']}")
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json() == agent
    assert response.headers["x-request-id"]


async def test_an_org_admin_manages_its_own_agents_and_cannot_see_others(
    registry: RunningRegistry,
) -> None:
    mine, theirs = await registry.org(), await registry.org()
    key = await registry.org_key(mine)
    own = await registry.agent(mine, key=key)
    other = await registry.agent(theirs)

    assert (
        await registry.request("GET", f"/api/v1/agents/{own['id']}", key=key)
    ).status_code == 200
    for method, body in (("GET", None), ("PUT", {"name": "Mine now"}), ("DELETE", None)):
        response = await registry.request(
            method, f"/api/v1/agents/{other['id']}", key=key, json=body
        )
        assert response.status_code == 404, (method, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    listing = await registry.request("GET", f"/api/v1/agents/organization/{theirs}", key=key)
    assert listing.status_code == 404
    create = await registry.request(
        "POST",
        "/api/v1/agents",
        key=key,
        json={"organization_id": theirs, "name": "x", "system_prompt": "y"},
    )
    assert create.status_code == 404
    assert create.json()["field"] == "organization_id"
    # The other org's agent is untouched.
    unchanged = await registry.request("GET", f"/api/v1/agents/{other['id']}")
    assert unchanged.json() == other


async def test_listing_pages_through_every_agent_once(registry: RunningRegistry) -> None:
    org = await registry.org()
    created = [(await registry.agent(org, name=f"agent {i}"))["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await registry.request("GET", f"/api/v1/agents/organization/{org}", params=params)
        assert page.status_code == 200
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == created


async def test_updates_bump_the_version_and_stale_writers_are_refused(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    agent = await registry.agent(org)
    path = f"/api/v1/agents/{agent['id']}"

    first = await registry.request("PUT", path, json={"name": "Reception", "version": 1})
    assert first.status_code == 200
    assert first.json()["version"] == 2
    assert first.json()["name"] == "Reception"
    assert first.json()["system_prompt"] == agent["system_prompt"]

    stale_body = await registry.request("PUT", path, json={"name": "Lost", "version": 1})
    assert stale_body.status_code == 409
    assert stale_body.json()["field"] == "version"
    stale_header = await registry.request(
        "PUT", path, json={"name": "Lost"}, headers={"If-Match": '"1"'}
    )
    assert stale_header.status_code == 412
    fresh_header = await registry.request(
        "PUT", path, json={"greeting": "Hi from {agent_name}"}, headers={"If-Match": '"2"'}
    )
    assert fresh_header.status_code == 200
    assert fresh_header.headers["etag"] == '"3"'
    final = (await registry.request("GET", path)).json()
    assert final["name"] == "Reception"
    assert final["greeting"] == "Hi from {agent_name}"


async def test_concurrent_conditional_updates_never_lose_one(registry: RunningRegistry) -> None:
    org = await registry.org()
    agent = await registry.agent(org)
    path = f"/api/v1/agents/{agent['id']}"
    results = await asyncio.gather(
        *(
            registry.request("PUT", path, json={"description": f"writer {i}", "version": 1})
            for i in range(6)
        )
    )
    statuses = sorted(response.status_code for response in results)
    assert statuses == [200, 409, 409, 409, 409, 409]
    winner = next(r.json() for r in results if r.status_code == 200)
    assert (await registry.request("GET", path)).json()["description"] == winner["description"]


async def test_a_deleted_agent_is_gone_and_its_number_is_free_again(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    number = new_number()
    agent = await registry.agent(org, phone_number=number)
    deleted = await registry.request("DELETE", f"/api/v1/agents/{agent['id']}")
    assert deleted.status_code == 204
    assert (await registry.request("GET", f"/api/v1/agents/{agent['id']}")).status_code == 404
    again = await registry.agent(org, phone_number=number)
    assert again["phone_number"] == number


async def test_the_openapi_document_describes_the_agent_endpoints(
    registry: RunningRegistry,
) -> None:
    response = await registry.client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/v1/agents", "/api/v1/agents/{agent_id}", "/api/v1/tools/platform"} <= set(paths)
    schemas = response.json()["components"]["schemas"]
    assert "phone_number" in schemas["AgentCreate"]["properties"]


async def test_health_readiness_and_metrics(registry: RunningRegistry) -> None:
    assert (await registry.client.get("/healthz")).status_code == 200
    await registry.settled()
    ready = await registry.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "postgres": True, "nats": True}
    await registry.request("GET", "/api/v1/organizations")
    metrics = await registry.client.get("/metrics")
    assert 'registry_http_requests_total{method="GET",route="/api/v1/organizations"' in metrics.text


async def test_a_replica_serves_an_agent_changed_through_another_replica(
    start_registry: Any,
) -> None:
    first: RunningRegistry = await start_registry()
    second: RunningRegistry = await start_registry()
    org = await first.org()
    agent = await first.agent(org)
    path = f"/api/v1/agents/{agent['id']}"
    for _ in range(2):  # the second read is answered from the first replica's memory
        assert (await first.request("GET", path)).json()["version"] == 1
    updated = await second.request("PUT", path, json={"name": "Renamed"})
    assert updated.json()["version"] == 2
    for _ in range(600):  # the change notification crosses replicas within milliseconds
        seen = (await first.request("GET", path)).json()
        if seen["version"] == 2:
            break
        await asyncio.sleep(0.01)
    assert seen["name"] == "Renamed"
    deleted = await second.request("DELETE", path)
    assert deleted.status_code == 204
    for _ in range(600):
        if (await first.request("GET", path)).status_code == 404:
            break
        await asyncio.sleep(0.01)
    assert (await first.request("GET", path)).status_code == 404


async def test_a_revoked_key_stops_working_and_keys_are_listed_without_secrets(
    registry: RunningRegistry,
) -> None:
    org, other = await registry.org(), await registry.org()

    async def issue(org_id: str, name: str) -> tuple[str, str]:
        response = await registry.request(
            "POST", f"/api/v1/organizations/{org_id}/api-keys", json={"name": name}
        )
        return response.json()["id"], response.json()["key"]

    (doomed_id, doomed), (_, keeper) = await issue(org, "laptop"), await issue(org, "ci")
    _, outsider = await issue(other, "elsewhere")
    keys_path = f"/api/v1/organizations/{org}/api-keys"
    listed = await registry.request("GET", keys_path, key=keeper)
    assert [(k["name"], k["revoked_at"]) for k in listed.json()] == [("laptop", None), ("ci", None)]
    assert doomed not in listed.text and keeper not in listed.text

    # Another organization's admin neither sees nor revokes these keys.
    revoke_path = f"/api/v1/api-keys/{doomed_id}"
    assert (await registry.request("DELETE", revoke_path, key=outsider)).status_code == 404
    assert (await registry.request("GET", keys_path, key=outsider)).status_code == 404

    assert (await registry.request("GET", "/api/v1/organizations", key=doomed)).status_code == 200
    assert (await registry.request("DELETE", revoke_path, key=keeper)).status_code == 204
    assert (await registry.request("GET", "/api/v1/organizations", key=doomed)).status_code == 401
    assert (await registry.request("DELETE", revoke_path)).status_code == 204  # idempotent
    assert (await registry.request("GET", "/api/v1/organizations", key=keeper)).status_code == 200
    after = (await registry.request("GET", keys_path, key=keeper)).json()
    assert [k["revoked_at"] is not None for k in after] == [True, False]


async def test_a_repeated_read_is_answered_from_memory_exactly_as_the_handler_answers_it(
    registry: RunningRegistry,
) -> None:
    mine, theirs = await registry.org(), await registry.org()
    key = await registry.org_key(mine)
    own = await registry.agent(mine, key=key, phone_number=new_number())
    other = await registry.agent(theirs)
    passed_on: list[str] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        passed_on.append(scope["path_params"]["agent_id"])

    async def read(
        agent_id: str, key: str | None, query: bytes = b""
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """What AnswerFromMemory sent; None when it passed the request on to the handler."""
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": f"/api/v1/agents/{agent_id}",
            "query_string": query,
            "headers": [(b"authorization", f"Bearer {key}".encode())] if key else [],
            "path_params": {"agent_id": agent_id},
            "app": registry.app,
            "state": {},
        }
        before = len(passed_on)
        await AnswerFromMemory(handler)(scope, None, send)  # type: ignore[arg-type]
        if len(passed_on) > before:
            assert sent == []
            return None
        start, body = sent
        headers = sorted((name.decode(), value.decode()) for name, value in start["headers"])
        return start["status"], headers, body["body"]

    def without_request_id(response: Any) -> list[tuple[str, str]]:
        return sorted((n, v) for n, v in response.headers.items() if n != "x-request-id")

    async def read_until_in_memory(agent_id: str, key: str) -> tuple[Any, Any]:
        """Reads through the handler until the agent stays in memory (the notification of the
        write before may still be on its way and drop what the first read stored); then the
        handler's answer and the one from memory."""
        for _ in range(100):
            response = await registry.request("GET", f"/api/v1/agents/{agent_id}", key=key)
            assert response.status_code == 200
            answered = await read(agent_id, key)
            if answered is not None:
                return response, answered
            await asyncio.sleep(0.05)
        raise AssertionError(f"agent {agent_id} never stayed in memory")

    assert await read(own["id"], key) is None  # neither the key nor the agent is known yet
    first, answered = await read_until_in_memory(own["id"], key)
    # From here on the key and the agent are in memory: the same answer, byte for byte.
    assert answered == (200, without_request_id(first), first.content)
    again = await registry.request("GET", f"/api/v1/agents/{own['id']}", key=key)
    assert (again.content, without_request_id(again)) == (first.content, without_request_id(first))
    assert again.headers["x-request-id"] != first.headers["x-request-id"]

    # Whatever memory alone cannot decide goes on to the handler, which decides it. Both agents
    # are in memory here (nothing below yields to the event loop, so no notification can land).
    await read_until_in_memory(other["id"], registry.admin_key)
    await read_until_in_memory(own["id"], key)
    unknown_key = "va_0123456789ab_" + "x" * 43
    for agent_id, caller, query in (
        (other["id"], key, b""),  # another organization's agent: the handler's 404
        (own["id"], unknown_key, b""),  # a key never verified
        (own["id"], None, b""),  # no key
        (own["id"].upper(), key, b""),  # not the canonical id the cache knows
        (own["id"], key, b"fields=name"),
    ):
        assert await read(agent_id, caller, query) is None, (agent_id, caller, query)
    assert (
        await registry.request("GET", f"/api/v1/agents/{other['id']}", key=key)
    ).status_code == 404
    assert (
        await registry.request("GET", f"/api/v1/agents/{own['id']}", key=unknown_key)
    ).status_code == 401

    # A change drops the agent from memory; the next read is the handler's, with the change.
    renamed = await registry.request(
        "PUT", f"/api/v1/agents/{own['id']}", key=key, json={"name": "Renamed"}
    )
    assert renamed.json()["version"] == 2
    assert await read(own["id"], key) is None
    fresh, answered = await read_until_in_memory(own["id"], key)
    assert fresh.json()["name"] == "Renamed"
    assert answered == (200, without_request_id(fresh), fresh.content)
    assert ("etag", '"2"') in answered[1]
