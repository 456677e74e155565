"""Organizations and their API keys."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from litestar import Request, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from voiceagents.registry import outbox
from voiceagents.registry.auth import Admin, issue_key
from voiceagents.registry.ids import parse_id
from voiceagents.registry.problems import Conflict, NotFound
from voiceagents.registry.runtime import registry_of
from voiceagents.registry.schemas import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    Organization,
    OrganizationCreate,
)

_COLUMNS = "id::text, name, created_at"


def _organization(row: asyncpg.Record) -> Organization:
    return Organization(id=row["id"], name=row["name"], created_at=row["created_at"])


@post("/api/v1/organizations", status_code=HTTP_201_CREATED, tags=["organizations"])
async def create_organization(
    request: Request[Any, Any, Any], admin: Admin, data: JSONBody[OrganizationCreate]
) -> Organization:
    """Create an organization (platform admin)."""
    admin.require_platform_admin("create organizations")
    pool = registry_of(request).pool
    org_id = str(uuid.uuid4())
    async with pool.acquire() as connection, connection.transaction():
        try:
            row = await connection.fetchrow(
                f"INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING {_COLUMNS}",  # noqa: S608 - constant column lists, values are bound
                org_id,
                data.name,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"an organization named {data.name!r} exists", field="name") from None
        await outbox.record(
            connection,
            entity="organization",
            action="created",
            entity_id=org_id,
            org_id=org_id,
            actor=admin.key_id,
        )
    assert row is not None
    return _organization(row)


@get("/api/v1/organizations", tags=["organizations"])
async def list_organizations(request: Request[Any, Any, Any], admin: Admin) -> list[Organization]:
    """Every organization for a platform admin; its own for an org admin."""
    pool = registry_of(request).pool
    rows = await pool.fetch(
        f"""
        SELECT {_COLUMNS} FROM organizations
        WHERE $1::uuid IS NULL OR id = $1::uuid
        ORDER BY created_at, id
        """,  # noqa: S608 - constant column lists, values are bound
        admin.scope(),
    )
    return [_organization(row) for row in rows]


@get("/api/v1/organizations/{org_id:str}", tags=["organizations"])
async def get_organization(
    request: Request[Any, Any, Any], admin: Admin, org_id: FromPath[str]
) -> Organization:
    org_id = parse_id(org_id, "organization")
    admin.check_org(org_id, field=None)
    row = await registry_of(request).pool.fetchrow(
        f"SELECT {_COLUMNS} FROM organizations WHERE id = $1",  # noqa: S608 - constant columns
        org_id,
    )
    if row is None:
        raise NotFound(f"organization {org_id} not found")
    return _organization(row)


@post(
    "/api/v1/organizations/{org_id:str}/api-keys", status_code=HTTP_201_CREATED, tags=["api keys"]
)
async def create_api_key(
    request: Request[Any, Any, Any],
    admin: Admin,
    org_id: FromPath[str],
    data: JSONBody[ApiKeyCreate],
) -> ApiKeyCreated:
    """Issue an org_admin key for an organization (its own org admins or a platform admin).
    The key is in this response only."""
    org_id = parse_id(org_id, "organization")
    admin.check_org(org_id)
    if data.role == "platform_admin":
        admin.require_platform_admin("issue platform_admin keys")
    pool = registry_of(request).pool
    if await pool.fetchval("SELECT 1 FROM organizations WHERE id = $1", org_id) is None:
        raise NotFound(f"organization {org_id} not found")
    issued = await issue_key(
        pool,
        role=data.role,
        organization_id=org_id if data.role == "org_admin" else None,
        name=data.name,
    )
    return ApiKeyCreated(
        id=issued.id,
        key=issued.key,
        name=issued.name,
        role=issued.role,
        organization_id=issued.organization_id,
        created_at=issued.created_at,
    )


@get("/api/v1/organizations/{org_id:str}/api-keys", tags=["api keys"])
async def list_api_keys(
    request: Request[Any, Any, Any], admin: Admin, org_id: FromPath[str]
) -> list[ApiKey]:
    """The organization's org_admin keys, revoked ones included (names and dates only)."""
    org_id = parse_id(org_id, "organization")
    admin.check_org(org_id, field=None)
    rows = await registry_of(request).pool.fetch(
        """
        SELECT id::text, name, role, organization_id::text, created_at, revoked_at
        FROM api_keys WHERE organization_id = $1 ORDER BY created_at, id
        """,
        org_id,
    )
    return [ApiKey(**dict(row)) for row in rows]


@delete("/api/v1/api-keys/{key_id:str}", status_code=HTTP_204_NO_CONTENT, tags=["api keys"])
async def revoke_api_key(
    request: Request[Any, Any, Any], admin: Admin, key_id: FromPath[str]
) -> None:
    """Revoke a key at once on this replica, within `AUTH_CACHE_SECONDS` on the others.
    An org admin may revoke its own organization's keys; a platform admin any key."""
    key_id = parse_id(key_id, "API key")
    registry = registry_of(request)
    async with registry.pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow(
            """
            UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
            WHERE id = $1 AND ($2::uuid IS NULL OR organization_id = $2::uuid)
            RETURNING organization_id::text
            """,
            key_id,
            admin.scope(),
        )
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        await outbox.record(
            connection,
            entity="api_key",
            action="deleted",  # a revoked key is gone for good
            entity_id=key_id,
            org_id=row["organization_id"],
            actor=admin.key_id,
        )
    registry.keys.forget()
