"""Initial schema: organizations, API keys, agents, platform and agent tools, outbox, call log.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
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
        CREATE TABLE organizations (
            id uuid PRIMARY KEY,
            name text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE UNIQUE INDEX organizations_name_key ON organizations (lower(name));
        CREATE INDEX organizations_created_idx ON organizations (created_at, id);

        CREATE TABLE api_keys (
            id uuid PRIMARY KEY,
            -- The public part of the key, used to find the row (the secret part is only hashed).
            prefix text NOT NULL UNIQUE,
            secret_hash bytea NOT NULL,
            role text NOT NULL CHECK (role IN ('platform_admin', 'org_admin')),
            organization_id uuid REFERENCES organizations (id) ON DELETE CASCADE,
            name text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            CHECK ((role = 'org_admin') = (organization_id IS NOT NULL))
        );
        CREATE INDEX api_keys_organization_idx ON api_keys (organization_id);

        -- Versions of phone-number bindings are global so that a number moving from one agent
        -- to another always carries a higher version than the binding it replaces.
        CREATE SEQUENCE phone_binding_version_seq;

        CREATE TABLE agents (
            id uuid PRIMARY KEY,
            organization_id uuid NOT NULL REFERENCES organizations (id),
            name text NOT NULL,
            description text NOT NULL DEFAULT '',
            system_prompt text NOT NULL,
            greeting text NOT NULL,
            greeting_interruptible boolean NOT NULL DEFAULT false,
            voice text NOT NULL,
            model text NOT NULL,
            language text NOT NULL,
            phone_number text,
            transfer_number text,
            max_concurrent_calls integer,
            is_active boolean NOT NULL DEFAULT true,
            version integer NOT NULL DEFAULT 1,
            number_version bigint NOT NULL DEFAULT nextval('phone_binding_version_seq'),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz
        );
        CREATE UNIQUE INDEX agents_phone_number_key ON agents (phone_number)
            WHERE deleted_at IS NULL AND phone_number IS NOT NULL;
        CREATE INDEX agents_organization_idx ON agents (organization_id, created_at, id)
            WHERE deleted_at IS NULL;

        CREATE TABLE platform_tools (
            name text PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('code', 'http')),
            spec jsonb NOT NULL,
            -- Code tools the latest catalog sync did not report stay, marked unavailable.
            available boolean NOT NULL DEFAULT true,
            version integer NOT NULL DEFAULT 1,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE agent_tools (
            id uuid PRIMARY KEY,
            agent_id uuid NOT NULL REFERENCES agents (id),
            organization_id uuid NOT NULL REFERENCES organizations (id),
            tool_name text NOT NULL REFERENCES platform_tools (name),
            config jsonb NOT NULL DEFAULT '{}',
            unselected_functions text[] NOT NULL DEFAULT '{}',
            is_active boolean NOT NULL DEFAULT true,
            auth_status text NOT NULL
                CHECK (auth_status IN ('not_required', 'disconnected', 'connected', 'expired')),
            version integer NOT NULL DEFAULT 1,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE UNIQUE INDEX agent_tools_agent_tool_key ON agent_tools (agent_id, tool_name);
        CREATE INDEX agent_tools_tool_name_idx ON agent_tools (tool_name);

        CREATE TABLE outbox (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            -- The event id, also the Nats-Msg-Id that JetStream deduplicates on.
            id uuid NOT NULL UNIQUE,
            subject text NOT NULL,
            payload bytea NOT NULL,
            -- Agents whose runtime config the relay projects into KV after publishing.
            agent_ids uuid[] NOT NULL DEFAULT '{}',
            -- Phone numbers this change released: [{"phone_number": ..., "version": ...}].
            released_numbers jsonb NOT NULL DEFAULT '[]',
            created_at timestamptz NOT NULL DEFAULT now(),
            sent_at timestamptz
        );
        CREATE INDEX outbox_unsent_idx ON outbox (seq) WHERE sent_at IS NULL;

        CREATE TABLE calls (
            call_sid text PRIMARY KEY,
            organization_id text NOT NULL,
            agent_id text NOT NULL,
            room text,
            from_number text,
            to_number text,
            status text NOT NULL DEFAULT 'in_progress',
            ended_by text,
            reason text,
            worker_id text,
            setup_ms double precision,
            started_at timestamptz NOT NULL,
            agent_joined_at timestamptz,
            ended_at timestamptz,
            duration_seconds double precision,
            transcript jsonb NOT NULL DEFAULT '[]',
            tool_invocations jsonb NOT NULL DEFAULT '[]',
            transfers jsonb NOT NULL DEFAULT '[]',
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX calls_started_idx ON calls (started_at DESC, call_sid DESC);
        CREATE INDEX calls_organization_idx
            ON calls (organization_id, started_at DESC, call_sid DESC);
        CREATE INDEX calls_agent_idx ON calls (agent_id, started_at DESC, call_sid DESC);

        -- Call events already applied: JetStream redelivers, the log applies each event once.
        CREATE TABLE call_events (
            event_id text PRIMARY KEY,
            call_sid text NOT NULL,
            kind text NOT NULL,
            at timestamptz NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX call_events_call_idx ON call_events (call_sid, at);
        """
    )


def downgrade() -> None:
    _execute(
        """
        DROP TABLE call_events, calls, outbox, agent_tools, platform_tools, agents, api_keys,
            organizations;
        DROP SEQUENCE phone_binding_version_seq;
        """
    )
