"""Platform tools (the catalog) and agent tools (a tool bound to one agent, with its settings).

Agent tool responses are the safe tier: configuration and status, never a credential.
Changing an agent's tools changes its runtime config, so it bumps the agent's version too.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from voiceagents.contracts.tools import PlatformToolSpec
from voiceagents.registry import outbox
from voiceagents.registry.agents import check_version, if_match_version, load_agent_for_update
from voiceagents.registry.auth import Admin, Principal
from voiceagents.registry.db import Connection
from voiceagents.registry.ids import parse_id
from voiceagents.registry.problems import Conflict, Invalid, NotFound
from voiceagents.registry.projection import check_runtime_config_size
from voiceagents.registry.runtime import registry_of
from voiceagents.registry.schemas import (
    AgentTool,
    AgentToolCreate,
    AgentToolUpdate,
    PlatformTool,
    PlatformToolCreate,
)
from voiceagents.registry.toolspecs import (
    check_config,
    check_unselected,
    http_tool_spec,
)

AGENT_TOOL_COLUMNS = """
    id::text, agent_id::text, organization_id::text, tool_name, config, unselected_functions,
    is_active, auth_status, version, created_at, updated_at
"""


def spec_from_row(row: asyncpg.Record) -> PlatformToolSpec:
    return msgspec.convert(row["spec"], PlatformToolSpec)


def _platform_tool(row: asyncpg.Record) -> PlatformTool:
    spec = spec_from_row(row)
    return PlatformTool(
        name=spec.name,
        description=spec.description,
        kind=spec.kind,
        config_schema=spec.config_schema,
        auth_type=spec.auth_type,
        oauth_provider=spec.oauth_provider,
        functions=spec.functions,
        timeout_seconds=spec.timeout_seconds,
        system=spec.system,
        available=row["available"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


def agent_tool_from_row(row: asyncpg.Record) -> AgentTool:
    return AgentTool(
        id=row["id"],
        agent_id=row["agent_id"],
        organization_id=row["organization_id"],
        tool_name=row["tool_name"],
        config=row["config"],
        unselected_functions=list(row["unselected_functions"]),
        is_active=row["is_active"],
        auth_status=row["auth_status"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# -- platform tools -----------------------------------------------------------------------------


@get("/api/v1/tools/platform", tags=["tools"])
async def list_platform_tools(request: Request[Any, Any, Any], admin: Admin) -> list[PlatformTool]:
    """The catalog: code tools reported by voice workers and declarative HTTP tools."""
    rows = await registry_of(request).pool.fetch(
        "SELECT spec, available, version, updated_at FROM platform_tools ORDER BY name"
    )
    return [_platform_tool(row) for row in rows]


@post("/api/v1/tools/platform", status_code=HTTP_201_CREATED, tags=["tools"])
async def create_platform_tool(
    request: Request[Any, Any, Any], admin: Admin, data: JSONBody[PlatformToolCreate]
) -> PlatformTool:
    """Define a declarative HTTP tool (platform admin)."""
    admin.require_platform_admin("create platform tools")
    spec = http_tool_spec(data)
    pool = registry_of(request).pool
    async with pool.acquire() as connection, connection.transaction():
        try:
            row = await connection.fetchrow(
                """
                INSERT INTO platform_tools (name, kind, spec) VALUES ($1, 'http', $2)
                RETURNING spec, available, version, updated_at
                """,
                spec.name,
                msgspec.to_builtins(spec),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a platform tool named {spec.name!r} exists", field="name") from None
        await outbox.record(
            connection,
            entity="platform_tool",
            action="created",
            entity_id=spec.name,
            version=1,
            actor=admin.key_id,
        )
    assert row is not None
    return _platform_tool(row)


async def _http_tool_for_update(connection: Connection, name: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT kind, version FROM platform_tools WHERE name = $1 FOR UPDATE", name
    )
    if row is None:
        raise NotFound(f"platform tool {name!r} not found", field="name")
    if row["kind"] != "http":
        # Code tools belong to the voice workers' catalog; a worker would overwrite any edit.
        raise Conflict(f"{name} is a code tool, changed only by deploying workers", field="name")
    return row


@put("/api/v1/tools/platform/{name:str}", tags=["tools"])
async def replace_platform_tool(
    request: Request[Any, Any, Any],
    admin: Admin,
    name: FromPath[str],
    data: JSONBody[PlatformToolCreate],
) -> PlatformTool:
    """Replace a declarative HTTP tool's definition (platform admin). Every agent bound to it
    gets the new definition on its next call; refused (409) while a binding's config or
    unselected functions would not fit the new definition."""
    admin.require_platform_admin("change platform tools")
    if data.name != name:
        raise Invalid(f"the body names {data.name!r}, the path {name!r}", field="name")
    spec = http_tool_spec(data)
    registry = registry_of(request)
    async with registry.pool.acquire() as connection, connection.transaction():
        current = await _http_tool_for_update(connection, name)
        for binding in await connection.fetch(
            """
            SELECT id::text, config, unselected_functions FROM agent_tools
            WHERE tool_name = $1 AND agent_id IN (SELECT id FROM agents WHERE deleted_at IS NULL)
            """,
            name,
        ):
            try:
                check_config(spec, binding["config"])
                check_unselected(spec, list(binding["unselected_functions"]))
            except Invalid as exc:
                raise Conflict(
                    f"agent tool {binding['id']} would no longer fit: {exc.detail}",
                    field="config_schema",
                ) from None
        row = await connection.fetchrow(
            """
            UPDATE platform_tools SET spec = $2, version = version + 1, updated_at = now()
            WHERE name = $1 RETURNING spec, available, version, updated_at
            """,
            name,
            msgspec.to_builtins(spec),
        )
        assert row is not None
        bound = await connection.fetch(
            """
            UPDATE agents SET version = version + 1, updated_at = now()
            WHERE deleted_at IS NULL
              AND id IN (SELECT agent_id FROM agent_tools WHERE tool_name = $1)
            RETURNING id::text
            """,
            name,
        )
        for agent in bound:
            await check_runtime_config_size(connection, agent["id"], "functions")
        await outbox.record(
            connection,
            entity="platform_tool",
            action="updated",
            entity_id=name,
            version=current["version"] + 1,
            actor=admin.key_id,
            project_agents=[agent["id"] for agent in bound],
        )
    for agent in bound:
        registry.agents.invalidate(agent["id"])
    return _platform_tool(row)


@delete("/api/v1/tools/platform/{name:str}", status_code=HTTP_204_NO_CONTENT, tags=["tools"])
async def delete_platform_tool(
    request: Request[Any, Any, Any], admin: Admin, name: FromPath[str]
) -> None:
    """Delete a declarative HTTP tool (platform admin); 409 while an agent tool binds it."""
    admin.require_platform_admin("delete platform tools")
    async with registry_of(request).pool.acquire() as connection, connection.transaction():
        current = await _http_tool_for_update(connection, name)
        # Bindings of deleted agents go with the tool; live ones are the admin's to remove.
        await connection.execute(
            """
            DELETE FROM agent_tools WHERE tool_name = $1
              AND agent_id IN (SELECT id FROM agents WHERE deleted_at IS NOT NULL)
            """,
            name,
        )
        bindings = await connection.fetchval(
            "SELECT count(*) FROM agent_tools WHERE tool_name = $1", name
        )
        if bindings:
            raise Conflict(
                f"{name} is bound to {bindings} agent tool(s); delete those first", field="name"
            )
        await connection.execute("DELETE FROM platform_tools WHERE name = $1", name)
        await outbox.record(
            connection,
            entity="platform_tool",
            action="deleted",
            entity_id=name,
            version=current["version"],
            actor=admin.key_id,
        )


# -- agent tools --------------------------------------------------------------------------------


async def _tool_spec(connection: Connection, tool_name: str) -> PlatformToolSpec:
    row = await connection.fetchrow("SELECT spec FROM platform_tools WHERE name = $1", tool_name)
    if row is None:
        raise NotFound(f"platform tool {tool_name!r} not found", field="tool_name")
    return spec_from_row(row)


async def _bump_agent(connection: Connection, agent_id: str) -> int:
    version: int = await connection.fetchval(
        "UPDATE agents SET version = version + 1, updated_at = now() WHERE id = $1 "
        "RETURNING version",
        agent_id,
    )
    return version


async def load_agent_tool_for_update(
    connection: Connection, agent_tool_id: str, admin: Principal
) -> asyncpg.Record:
    row: asyncpg.Record | None = await connection.fetchrow(
        f"""
        SELECT {AGENT_TOOL_COLUMNS} FROM agent_tools
        WHERE id = $1 AND ($2::uuid IS NULL OR organization_id = $2::uuid)
          AND agent_id IN (SELECT id FROM agents WHERE deleted_at IS NULL)
        FOR UPDATE
        """,  # noqa: S608 - constant column lists, values are bound
        agent_tool_id,
        admin.scope(),
    )
    if row is None:
        raise NotFound(f"agent tool {agent_tool_id} not found")
    return row


@post("/api/v1/tools/agent", status_code=HTTP_201_CREATED, tags=["tools"])
async def create_agent_tool(
    request: Request[Any, Any, Any], admin: Admin, data: JSONBody[AgentToolCreate]
) -> AgentTool:
    """Bind a platform tool to an agent, with its config and the functions left out."""
    agent_id = parse_id(data.agent_id, "agent", "agent_id")
    pool = registry_of(request).pool
    async with pool.acquire() as connection, connection.transaction():
        try:
            agent = await load_agent_for_update(connection, agent_id, admin)
        except NotFound as exc:
            exc.field = "agent_id"
            raise
        spec = await _tool_spec(connection, data.tool_name)
        check_config(spec, data.config)
        check_unselected(spec, data.unselected_functions)
        agent_tool_id = str(uuid.uuid4())
        try:
            row = await connection.fetchrow(
                f"""
                INSERT INTO agent_tools (id, agent_id, organization_id, tool_name, config,
                    unselected_functions, is_active, auth_status)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                RETURNING {AGENT_TOOL_COLUMNS}
                """,  # noqa: S608 - constant column lists, values are bound
                agent_tool_id,
                agent_id,
                agent["organization_id"],
                spec.name,
                data.config,
                data.unselected_functions,
                data.is_active,
                "not_required" if spec.auth_type == "none" else "disconnected",
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"agent {agent_id} already has tool {spec.name!r}", field="tool_name"
            ) from None
        assert row is not None
        await check_runtime_config_size(connection, agent_id, "config")
        version = await _bump_agent(connection, agent_id)
        await outbox.record(
            connection,
            entity="agent_tool",
            action="created",
            entity_id=agent_tool_id,
            org_id=agent["organization_id"],
            agent_id=agent_id,
            version=version,
            actor=admin.key_id,
            project_agents=[agent_id],
        )
    registry_of(request).agents.invalidate(agent_id)
    return agent_tool_from_row(row)


@get("/api/v1/tools/agent/{agent_id:str}", tags=["tools"])
async def list_agent_tools(
    request: Request[Any, Any, Any], admin: Admin, agent_id: FromPath[str]
) -> list[AgentTool]:
    agent_id = parse_id(agent_id, "agent")
    pool = registry_of(request).pool
    visible = await pool.fetchval(
        """
        SELECT 1 FROM agents WHERE id = $1 AND deleted_at IS NULL
          AND ($2::uuid IS NULL OR organization_id = $2::uuid)
        """,
        agent_id,
        admin.scope(),
    )
    if visible is None:
        raise NotFound(f"agent {agent_id} not found")
    rows = await pool.fetch(
        f"SELECT {AGENT_TOOL_COLUMNS} FROM agent_tools WHERE agent_id = $1 ORDER BY tool_name",  # noqa: S608 - constant column lists, values are bound
        agent_id,
    )
    return [agent_tool_from_row(row) for row in rows]


@put("/api/v1/tools/agent/{agent_tool_id:str}", tags=["tools"])
async def update_agent_tool(
    request: Request[Any, Any, Any],
    admin: Admin,
    agent_tool_id: FromPath[str],
    data: JSONBody[AgentToolUpdate],
) -> Response[AgentTool]:
    """Change config, unselected functions or the active flag. Conditional on `If-Match`
    (412) or the body's `version` (409) when given."""
    agent_tool_id = parse_id(agent_tool_id, "agent tool")
    if_match = if_match_version(request.headers.get("if-match"))
    pool = registry_of(request).pool
    async with pool.acquire() as connection, connection.transaction():
        current = await load_agent_tool_for_update(connection, agent_tool_id, admin)
        check_version(
            current["version"],
            if_match,
            None if data.version is msgspec.UNSET else data.version,
            "agent tool",
        )
        spec = await _tool_spec(connection, current["tool_name"])
        config = current["config"] if data.config is msgspec.UNSET else data.config
        unselected = (
            list(current["unselected_functions"])
            if data.unselected_functions is msgspec.UNSET
            else data.unselected_functions
        )
        is_active = current["is_active"] if data.is_active is msgspec.UNSET else data.is_active
        if data.config is not msgspec.UNSET:
            check_config(spec, config)
        if data.unselected_functions is not msgspec.UNSET:
            check_unselected(spec, unselected)
        row = await connection.fetchrow(
            f"""
            UPDATE agent_tools SET config = $2, unselected_functions = $3, is_active = $4,
                version = version + 1, updated_at = now()
            WHERE id = $1
            RETURNING {AGENT_TOOL_COLUMNS}
            """,  # noqa: S608 - constant column lists, values are bound
            agent_tool_id,
            config,
            unselected,
            is_active,
        )
        assert row is not None
        await check_runtime_config_size(connection, current["agent_id"], "config")
        version = await _bump_agent(connection, current["agent_id"])
        await outbox.record(
            connection,
            entity="agent_tool",
            action="updated",
            entity_id=agent_tool_id,
            org_id=current["organization_id"],
            agent_id=current["agent_id"],
            version=version,
            actor=admin.key_id,
            project_agents=[current["agent_id"]],
        )
    registry_of(request).agents.invalidate(current["agent_id"])
    return Response(agent_tool_from_row(row), headers={"ETag": f'"{row["version"]}"'})


@delete("/api/v1/tools/agent/{agent_tool_id:str}", status_code=HTTP_204_NO_CONTENT, tags=["tools"])
async def delete_agent_tool(
    request: Request[Any, Any, Any], admin: Admin, agent_tool_id: FromPath[str]
) -> None:
    agent_tool_id = parse_id(agent_tool_id, "agent tool")
    if_match = if_match_version(request.headers.get("if-match"))
    pool = registry_of(request).pool
    async with pool.acquire() as connection, connection.transaction():
        current = await load_agent_tool_for_update(connection, agent_tool_id, admin)
        check_version(current["version"], if_match, None, "agent tool")
        await connection.execute("DELETE FROM agent_tools WHERE id = $1", agent_tool_id)
        version = await _bump_agent(connection, current["agent_id"])
        await outbox.record(
            connection,
            entity="agent_tool",
            action="deleted",
            entity_id=agent_tool_id,
            org_id=current["organization_id"],
            agent_id=current["agent_id"],
            version=version,
            actor=admin.key_id,
            project_agents=[current["agent_id"]],
        )
    registry_of(request).agents.invalidate(current["agent_id"])
