"""Knowledge base: articles per organization, split into passages indexed for full-text search.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
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
        -- Lets one GIN index hold the organization next to the words, so a search reads only
        -- its own organization's entries (a trusted extension: the database owner may create it).
        CREATE EXTENSION IF NOT EXISTS btree_gin;

        CREATE TABLE kb_articles (
            id uuid PRIMARY KEY,
            organization_id uuid NOT NULL REFERENCES organizations (id),
            collection text NOT NULL,
            title text NOT NULL,
            format text NOT NULL CHECK (format IN ('text', 'markdown')),
            body text NOT NULL,
            passage_count integer NOT NULL,
            version integer NOT NULL DEFAULT 1,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX kb_articles_organization_idx
            ON kb_articles (organization_id, created_at, id);

        -- What search reads: short plain-text pieces of an article, rewritten on every change of
        -- it. Organization and collection are copied here so a search touches no other table.
        CREATE TABLE kb_passages (
            article_id uuid NOT NULL REFERENCES kb_articles (id) ON DELETE CASCADE,
            position integer NOT NULL,
            organization_id uuid NOT NULL,
            collection text NOT NULL,
            -- The article's title, and the section heading the passage sits under.
            title text NOT NULL,
            text text NOT NULL,
            search tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('english', title), 'A') || to_tsvector('english', text)
            ) STORED,
            PRIMARY KEY (article_id, position)
        );
        CREATE INDEX kb_passages_search_idx ON kb_passages USING gin (organization_id, search)
        """
    )


def downgrade() -> None:
    _execute("DROP TABLE kb_passages, kb_articles")
