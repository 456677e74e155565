"""PostgreSQL: the schema (alembic migrations) and the asyncpg pool the service runs on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import msgspec
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"

# A connection of its own or one borrowed from the pool (generic only in the type stubs).
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection


def alembic_config(dsn: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates '%': a password with one must be escaped.
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1).replace(
        "postgres://", "postgresql+asyncpg://", 1
    )
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(dsn: str) -> None:
    """Bring the database to the newest schema (blocking; safe to run from every replica)."""
    command.upgrade(alembic_config(dsn), "head")


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _init_connection(connection: asyncpg.Connection[Any]) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog"
        )


async def connect(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    assert pool is not None
    return pool


async def connect_one(dsn: str) -> asyncpg.Connection[Any]:
    """A single connection with the same codecs (the relay's LISTEN connection, commands)."""
    connection: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    await _init_connection(connection)
    return connection
