"""Bad input gets a problem+json error naming the field, with the right 4xx, never a 5xx."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import asyncpg
import pytest

from .conftest import RunningRegistry, new_number

pytestmark = pytest.mark.integration

HTTP_TOOL: dict[str, Any] = {
    "name": "OrderLookup",
    "description": "Looks up an order in the shop.",
    "config_schema": {
        "type": "object",
        "properties": {"shop_domain": {"type": "string"}, "max_results": {"type": "integer"}},
        "required": ["shop_domain"],
    },
    "functions": [
        {
            "name": "get_order",
            "description": "Get an order by number.",
            "method": "GET",
            "url_template": "https://{config.shop_domain}/orders/{order_number}",
            "parameters": {
                "type": "object",
                "properties": {"order_number": {"type": "string"}},
                "required": ["order_number"],
            },
        },
        {
            "name": "cancel_order",
            "description": "Cancel an order.",
            "method": "POST",
            "url_template": "https://{config.shop_domain}/orders/{order_number}/cancel",
            "parameters": {
                "type": "object",
                "properties": {"order_number": {"type": "string"}},
            },
        },
    ],
}


# A tool whose config schema takes any keys (as `clock`'s): only the size limit bounds a config.
OPEN_CONFIG_TOOL: dict[str, Any] = {
    "name": "Notes",
    "description": "Reads notes.",
    "config_schema": {"type": "object"},
    "functions": [
        {"name": "read", "description": "Read.", "method": "GET", "url_template": "https://x.test/"}
    ],
}


def problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:voiceagents:problem:")
    assert body["detail"]
    if field is not None:
        assert body["field"] == field, body
    return body


async def test_an_invalid_e164_number_is_a_422_naming_phone_number(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    for bad in ("4155550100", "+0155550100", "+1415555010012345", "+1 415 555 0100"):
        response = await registry.request(
            "POST",
            "/api/v1/agents",
            json={"organization_id": org, "name": "a", "system_prompt": "b", "phone_number": bad},
        )
        problem(response, 422, "phone_number")
    agent = await registry.agent(org)
    response = await registry.request(
        "PUT", f"/api/v1/agents/{agent['id']}", json={"transfer_number": "call me"}
    )
    problem(response, 422, "transfer_number")


async def test_a_number_bound_to_another_agent_is_a_409(registry: RunningRegistry) -> None:
    org, other_org = await registry.org(), await registry.org()
    number = new_number()
    await registry.agent(org, phone_number=number)
    response = await registry.request(
        "POST",
        "/api/v1/agents",
        json={
            "organization_id": other_org,
            "name": "b",
            "system_prompt": "c",
            "phone_number": number,
        },
    )
    problem(response, 409, "phone_number")
    second = await registry.agent(org)
    moved = await registry.request(
        "PUT", f"/api/v1/agents/{second['id']}", json={"phone_number": number}
    )
    problem(moved, 409, "phone_number")


async def test_missing_or_wrong_keys_are_401(registry: RunningRegistry) -> None:
    no_key = await registry.client.get("/api/v1/organizations")
    problem(no_key, 401)
    assert no_key.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer va_000000000000_" + "x" * 43, "Bearer nonsense", "Basic abc"):
        response = await registry.client.get(
            "/api/v1/organizations", headers={"Authorization": header}
        )
        problem(response, 401)
    # A real key with one character changed.
    forged = registry.admin_key[:-1] + ("A" if registry.admin_key[-1] != "A" else "B")
    problem(await registry.request("GET", "/api/v1/organizations", key=forged), 401)


async def test_an_org_admin_cannot_create_platform_tools_or_organizations(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    key = await registry.org_key(org)
    problem(await registry.request("POST", "/api/v1/tools/platform", key=key, json=HTTP_TOOL), 403)
    problem(
        await registry.request("POST", "/api/v1/organizations", key=key, json={"name": "x"}), 403
    )
    platform_key = await registry.request(
        "POST",
        f"/api/v1/organizations/{org}/api-keys",
        key=key,
        json={"name": "escalate", "role": "platform_admin"},
    )
    problem(platform_key, 403)


async def test_a_long_system_prompt_and_a_huge_body_are_refused(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    long_prompt = await registry.request(
        "POST",
        "/api/v1/agents",
        json={"organization_id": org, "name": "a", "system_prompt": "x" * 32_769},
    )
    problem(long_prompt, 422, "system_prompt")
    huge = await registry.request(
        "POST",
        "/api/v1/agents",
        json={"organization_id": org, "name": "a", "system_prompt": "x" * (1024 * 1024 + 10)},
    )
    problem(huge, 413)


async def test_malformed_json_is_a_400(registry: RunningRegistry) -> None:
    for body in (b'{"name": ', b"not json", b""):
        response = await registry.request(
            "POST",
            "/api/v1/agents",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        problem(response, 400)


async def test_wrong_types_and_unknown_fields_name_the_field(registry: RunningRegistry) -> None:
    org = await registry.org()
    wrong_type = await registry.request(
        "POST",
        "/api/v1/agents",
        json={"organization_id": org, "name": "a", "system_prompt": "b", "is_active": "yes"},
    )
    problem(wrong_type, 422, "is_active")
    typo = await registry.request(
        "POST",
        "/api/v1/agents",
        json={"organization_id": org, "name": "a", "system_prompt": "b", "greting": "hi"},
    )
    problem(typo, 422, "greting")
    missing = await registry.request(
        "POST", "/api/v1/agents", json={"organization_id": org, "name": "a"}
    )
    problem(missing, 422, "system_prompt")
    bad_limit = await registry.request(
        "GET", f"/api/v1/agents/organization/{org}", params={"limit": 0}
    )
    problem(bad_limit, 422, "limit")
    bad_cursor = await registry.request(
        "GET", f"/api/v1/agents/organization/{org}", params={"cursor": "???"}
    )
    problem(bad_cursor, 422, "cursor")
    problem(await registry.request("GET", "/api/v1/agents/not-a-uuid"), 404)


async def test_a_stale_version_is_refused(registry: RunningRegistry) -> None:
    org = await registry.org()
    agent = await registry.agent(org)
    path = f"/api/v1/agents/{agent['id']}"
    assert (await registry.request("PUT", path, json={"name": "v2"})).status_code == 200
    problem(await registry.request("PUT", path, json={"name": "x", "version": 1}), 409, "version")
    problem(
        await registry.request("PUT", path, json={"name": "x"}, headers={"If-Match": '"1"'}),
        412,
        "If-Match",
    )
    problem(await registry.request("DELETE", path, headers={"If-Match": '"1"'}), 412, "If-Match")


async def test_tool_definitions_and_bindings_are_validated(registry: RunningRegistry) -> None:
    bad_schema = {**HTTP_TOOL, "config_schema": {"type": "object", "properties": {"a": 5}}}
    body = problem(
        await registry.request("POST", "/api/v1/tools/platform", json=bad_schema),
        422,
        "config_schema",
    )
    assert body["json_path"] == "$.config_schema.properties.a"
    unknown_param = {
        **HTTP_TOOL,
        "functions": [{**HTTP_TOOL["functions"][0], "url_template": "https://x/{order_id}"}],
    }
    body = problem(
        await registry.request("POST", "/api/v1/tools/platform", json=unknown_param),
        422,
        "functions[0].url_template",
    )
    assert "order_id" in body["detail"]
    unknown_config = {
        **HTTP_TOOL,
        "functions": [
            {
                **HTTP_TOOL["functions"][0],
                "headers_template": {"X-Token": "{config.api_token}"},
            }
        ],
    }
    problem(
        await registry.request("POST", "/api/v1/tools/platform", json=unknown_config),
        422,
        "functions[0].headers_template.X-Token",
    )
    created = await registry.request("POST", "/api/v1/tools/platform", json=HTTP_TOOL)
    assert created.status_code == 201, created.text
    problem(await registry.request("POST", "/api/v1/tools/platform", json=HTTP_TOOL), 409, "name")

    org = await registry.org()
    agent = await registry.agent(org)
    binding = {"agent_id": agent["id"], "tool_name": "OrderLookup"}
    body = problem(
        await registry.request(
            "POST",
            "/api/v1/tools/agent",
            json={**binding, "config": {"shop_domain": "acme.example", "max_results": "ten"}},
        ),
        422,
        "config",
    )
    assert body["json_path"] == "$.config.max_results"
    body = problem(
        await registry.request("POST", "/api/v1/tools/agent", json={**binding, "config": {}}),
        422,
        "config",
    )
    assert "shop_domain" in body["detail"]
    problem(
        await registry.request(
            "POST",
            "/api/v1/tools/agent",
            json={
                **binding,
                "config": {"shop_domain": "acme.example"},
                "unselected_functions": ["cancel_order", "refund_order"],
            },
        ),
        422,
        "unselected_functions[1]",
    )
    problem(
        await registry.request(
            "POST", "/api/v1/tools/agent", json={**binding, "tool_name": "NoSuchTool"}
        ),
        404,
        "tool_name",
    )

    # The same checks on a change, and another organization's admin does not see the binding.
    created = await registry.request(
        "POST", "/api/v1/tools/agent", json={**binding, "config": {"shop_domain": "acme.example"}}
    )
    path = f"/api/v1/tools/agent/{created.json()['id']}"
    body = problem(
        await registry.request("PUT", path, json={"config": {"shop_domain": 7}}), 422, "config"
    )
    assert body["json_path"] == "$.config.shop_domain"
    problem(
        await registry.request("PUT", path, json={"unselected_functions": ["refund_order"]}),
        422,
        "unselected_functions[0]",
    )
    outsider = await registry.org_key(await registry.org())
    problem(await registry.request("PUT", path, key=outsider, json={"is_active": False}), 404)
    problem(await registry.request("DELETE", path, key=outsider), 404)
    problem(await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}", key=outsider), 404)
    assert (await registry.request("GET", f"/api/v1/tools/agent/{agent['id']}")).json()[0][
        "is_active"
    ]


async def test_api_keys_are_stored_hashed(registry: RunningRegistry) -> None:
    key = await registry.org_key(await registry.org())
    connection = await asyncpg.connect(registry.dsn)
    try:
        rows = await connection.fetch("SELECT * FROM api_keys")
    finally:
        await connection.close()
    dump = repr([dict(row) for row in rows])
    for issued in (key, registry.admin_key):
        assert issued not in dump
        secret = issued[len("va_") + 13 :]  # after "va_<12-hex prefix>_"
        assert len(secret) >= 32
        assert secret not in dump


async def test_a_runtime_config_too_large_for_nats_is_refused_naming_the_field(
    registry: RunningRegistry,
) -> None:
    # Neither config schema forbids extra keys: each binding alone is well under 1 MiB.
    for name in ("NotesA", "NotesB"):
        tool = {**OPEN_CONFIG_TOOL, "name": name}
        created = await registry.request("POST", "/api/v1/tools/platform", json=tool)
        assert created.status_code == 201, created.text
    org = await registry.org()
    key = await registry.org_key(org)
    agent = await registry.agent(org, key=key)
    first = await registry.request(
        "POST",
        "/api/v1/tools/agent",
        key=key,
        json={"agent_id": agent["id"], "tool_name": "NotesA", "config": {"n": "x" * 200_000}},
    )
    assert first.status_code == 201, first.text
    second = {"agent_id": agent["id"], "tool_name": "NotesB", "config": {"n": "x" * 100_000}}
    body = problem(await registry.request("POST", "/api/v1/tools/agent", key=key, json=second), 422)
    assert body["field"] == "config"
    assert "262144" in body["detail"]
    problem(
        await registry.request(
            "PUT",
            f"/api/v1/tools/agent/{first.json()['id']}",
            key=key,
            json={"config": {"n": "x" * 300_000}},
        ),
        422,
        "config",
    )
    # A prompt of control characters (6 bytes each in JSON) that fits alone, not with the tool.
    problem(
        await registry.request(
            "PUT",
            f"/api/v1/agents/{agent['id']}",
            key=key,
            json={"system_prompt": "\x01" * 20_000},
        ),
        422,
        "system_prompt",
    )
    # Nothing refused was stored: the agent is still at the version of its one binding.
    current = await registry.request("GET", f"/api/v1/agents/{agent['id']}", key=key)
    assert current.json()["version"] == 2


async def test_credential_placeholders_match_the_tools_auth_type(
    registry: RunningRegistry,
) -> None:
    function = {
        **HTTP_TOOL["functions"][0],
        "url_template": "https://{config.shop_domain}/orders/{order_number}?key={secret.api_key}",
        "headers_template": {"X-Api-Key": "{secret.api_key}"},
        "body_template": {"auth": {"user": "{secret.user.name}"}},
    }
    api_key_tool = {**HTTP_TOOL, "name": "ShopApi", "auth_type": "api_key", "functions": [function]}
    created = await registry.request("POST", "/api/v1/tools/platform", json=api_key_tool)
    assert created.status_code == 201, created.text
    bearer = {
        **HTTP_TOOL["functions"][0],
        "headers_template": {"Authorization": "Token {access_token}"},
    }
    oauth_tool = {
        **HTTP_TOOL,
        "name": "OAuthApi",
        "auth_type": "oauth2",
        "oauth_provider": "example",
        "functions": [bearer],
    }
    created = await registry.request("POST", "/api/v1/tools/platform", json=oauth_tool)
    assert created.status_code == 201, created.text

    # A tool of another auth type gets no such value from tool-vault: the worker could not fill it.
    for auth, body in (
        ("none", {**api_key_tool, "name": "NoAuth", "auth_type": "none"}),
        ("oauth2", {**oauth_tool, "name": "OAuthSecret", "functions": [function]}),
    ):
        refused = problem(
            await registry.request("POST", "/api/v1/tools/platform", json=body),
            422,
            "functions[0].url_template",
        )
        assert auth in refused["detail"]
    problem(
        await registry.request(
            "POST", "/api/v1/tools/platform", json={**oauth_tool, "auth_type": "api_key"}
        ),
        422,
        "functions[0].headers_template.Authorization",
    )
    for bad in ("{secret.}", "{token}", "{secret-key}"):
        unknown = {**HTTP_TOOL["functions"][0], "headers_template": {"X-Key": bad}}
        problem(
            await registry.request(
                "POST",
                "/api/v1/tools/platform",
                json={**api_key_tool, "name": "Unknown", "functions": [unknown]},
            ),
            422,
            "functions[0].headers_template.X-Key",
        )


async def test_nul_characters_are_refused_naming_the_field(registry: RunningRegistry) -> None:
    org = await registry.org()
    agent = await registry.agent(org)
    nul_function = {**HTTP_TOOL["functions"][0], "description": "d\x00"}
    for method, path, body, field in (
        ("POST", "/api/v1/organizations", {"name": "o\x00"}, "name"),
        (
            "POST",
            "/api/v1/agents",
            {"organization_id": org, "name": "a\x00b", "system_prompt": "x"},
            "name",
        ),
        ("PUT", f"/api/v1/agents/{agent['id']}", {"description": "x\x00"}, "description"),
        (
            "POST",
            "/api/v1/knowledge/articles",
            {"organization_id": org, "title": "t\x00", "body": "hello world"},
            "title",
        ),
        ("POST", "/api/v1/tools/platform", {**HTTP_TOOL, "functions": [nul_function]}, "functions"),
    ):
        problem(await registry.request(method, path, json=body), 422, field)
    tool = await registry.request("POST", "/api/v1/tools/platform", json=OPEN_CONFIG_TOOL)
    assert tool.status_code == 201, tool.text
    binding = {"agent_id": agent["id"], "tool_name": "Notes", "config": {"shop": ["a", "b\x00"]}}
    body = problem(await registry.request("POST", "/api/v1/tools/agent", json=binding), 422)
    assert (body["field"], body["json_path"]) == ("config", "$.config.shop[1]")
    problem(await registry.request("GET", "/api/v1/calls/CA%00x"), 404, "call_sid")
    articles = f"/api/v1/knowledge/articles/organization/{org}"
    problem(
        await registry.request("GET", articles, params={"collection": "a\x00"}), 422, "collection"
    )
    # A key with a NUL is no key.
    weird = {"Authorization": "Bearer va_" + "\x00" * 12 + "_" + "a" * 40}
    problem(await registry.client.get("/api/v1/organizations", headers=weird), 401)


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_tampered_cursors_and_mixed_time_zones_are_not_server_errors(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    for path in (
        f"/api/v1/agents/organization/{org}",
        f"/api/v1/knowledge/articles/organization/{org}",
    ):
        for tampered in (
            "2024-01-01T00:00:00+00:00|nope",  # not a UUID
            f"2024-01-01T00:00:00|{uuid.uuid4()}",  # no time zone
        ):
            response = await registry.request("GET", path, params={"cursor": _cursor(tampered)})
            problem(response, 422, "cursor")
    nul_key = _cursor("2024-01-01T00:00:00+00:00|a\x00")
    problem(
        await registry.request("GET", "/api/v1/calls", params={"cursor": nul_key}), 422, "cursor"
    )
    # A time without an offset is UTC, also next to one with an offset.
    mixed = await registry.request(
        "GET",
        "/api/v1/calls",
        params={"since": "2024-01-01T00:00:00", "until": "2024-01-02T00:00:00Z"},
    )
    assert mixed.status_code == 200, mixed.text
    reversed_range = {"since": "2024-01-02T00:00:00+01:00", "until": "2024-01-01T22:00:00"}
    problem(await registry.request("GET", "/api/v1/calls", params=reversed_range), 422, "since")
