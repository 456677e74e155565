"""Outbox rows that can never be published are parked, so they no longer hold up later rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _execute(script: str) -> None:
    # asyncpg prepares each statement: one statement per call.
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute(
        """
        -- Set by the relay when publishing or projecting the row failed in a way no retry
        -- fixes (a runtime config over NATS' max_payload), with the error saying why.
        ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN park_reason text;
        DROP INDEX outbox_unsent_idx;
        CREATE INDEX outbox_unsent_idx ON outbox (seq) WHERE sent_at IS NULL AND parked_at IS NULL
        """
    )


def downgrade() -> None:
    _execute(
        """
        DROP INDEX outbox_unsent_idx;
        ALTER TABLE outbox DROP COLUMN parked_at, DROP COLUMN park_reason;
        CREATE INDEX outbox_unsent_idx ON outbox (seq) WHERE sent_at IS NULL
        """
    )
