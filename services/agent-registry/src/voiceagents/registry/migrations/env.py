"""Alembic environment: runs the registry's migrations on the async (asyncpg) engine.

Migrations are plain SQL (`op.execute`); an advisory lock keeps two replicas that start at the
same time from migrating at once.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

# Any constant works; every registry replica uses the same one.
_MIGRATION_LOCK = 0x7265_6769_7374_7279


def _run(connection: Connection) -> None:
    # A session lock: released when the engine's connection closes, also after a failure.
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
    connection.commit()
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _migrate() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the registry migrates online only: python -m voiceagents.registry migrate")
asyncio.run(_migrate())
