"""Credential release: what a voice worker gets for a live call's grant, and every way it is
refused with a typed error that carries no secret."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox
from nats.aio.client import Client as NatsClient

from voiceagents.contracts import bus
from voiceagents.contracts.calls import (
    CALL_ENDED_SUBJECT,
    CALL_FAILED_SUBJECT,
    CALLS_STREAM,
    CallEnded,
    CallFailed,
)
from voiceagents.contracts.codec import decode, encode
from voiceagents.toolvault.app import ToolVault

from .conftest import (
    Agents,
    Worker,
    binding,
    live_call_with_api_key,
    put_secrets,
    sign_grant,
    until_revoked,
)

pytestmark = pytest.mark.integration


async def test_a_live_calls_grant_gets_its_tools_secrets_sealed_to_the_worker(
    agents: Agents, worker: Worker, registry: NatsClient
) -> None:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    stored = await put_secrets(registry, agent, crm.agent_tool_id, {"token": "crm-123"})
    assert stored.version == 1 and stored.error is None

    reply = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [crm.agent_tool_id]
    )

    assert reply.error is None and reply.tool_errors == []
    [credentials] = worker.open(reply).credentials
    assert credentials.agent_tool_id == crm.agent_tool_id
    assert credentials.kind == "api_key"
    assert credentials.secrets == {"token": "crm-123"}


async def test_a_captured_reply_does_not_open_without_the_workers_private_key(
    agents: Agents, worker: Worker, registry: NatsClient
) -> None:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    await put_secrets(registry, agent, crm.agent_tool_id, {"token": "crm-captured"})

    reply = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [crm.agent_tool_id]
    )

    captured = worker.last_raw_reply  # the bytes exactly as they crossed the bus
    assert b"crm-captured" not in captured
    assert reply.sealed_credentials is not None
    with pytest.raises(CryptoError):
        SealedBox(PrivateKey.generate()).decrypt(base64.b64decode(reply.sealed_credentials))


async def test_a_forged_grant_is_refused_as_grant_invalid(agents: Agents, worker: Worker) -> None:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    forged = sign_grant(
        org_id=agent.org_id, agent_id=agent.agent_id, key=Ed25519PrivateKey.generate()
    )

    reply = await worker.request(forged, [crm.agent_tool_id])

    assert reply.error is not None and reply.error.code == "grant_invalid"
    assert reply.sealed_credentials is None


async def test_a_grant_for_another_audience_or_unknown_key_is_refused(
    agents: Agents, worker: Worker
) -> None:
    agent = await agents.create(tools=[binding("api_key")])
    ids = [agent.tools[0].agent_tool_id]
    wrong_audience = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id, aud="registry")
    unknown_kid = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id, kid="retired-key")

    for grant in (wrong_audience, unknown_kid, "not-a-jws"):
        reply = await worker.request(grant, ids)
        assert reply.error is not None and reply.error.code == "grant_invalid"


async def test_an_expired_grant_is_refused_as_grant_expired(agents: Agents, worker: Worker) -> None:
    agent = await agents.create(tools=[binding("api_key")])

    expired = sign_grant(org_id=agent.org_id, agent_id=agent.agent_id, lifetime=-60)
    reply = await worker.request(expired, [agent.tools[0].agent_tool_id])

    assert reply.error is not None and reply.error.code == "grant_expired"


async def test_a_grant_for_another_org_is_refused_as_not_bound(
    agents: Agents, worker: Worker, registry: NatsClient
) -> None:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    await put_secrets(registry, agent, crm.agent_tool_id, {"token": "org-a"})

    # A valid signature, but the grant claims the agent lives in another organization.
    grant = sign_grant(org_id="org-other", agent_id=agent.agent_id)
    reply = await worker.request(grant, [crm.agent_tool_id])

    assert reply.error is not None and reply.error.code == "not_bound"
    assert reply.sealed_credentials is None


async def test_an_inactive_agent_gets_nothing(agents: Agents, worker: Worker) -> None:
    agent = await agents.create(tools=[binding("api_key")], is_active=False)

    reply = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id), [agent.tools[0].agent_tool_id]
    )

    assert reply.error is not None and reply.error.code == "not_bound"


async def test_a_tool_not_bound_to_the_agent_is_refused_and_the_others_still_released(
    agents: Agents, worker: Worker, registry: NatsClient
) -> None:
    crm = binding("api_key")
    agent = await agents.create(tools=[crm])
    other = await agents.create(tools=[binding("api_key")], org_id=agent.org_id)
    foreign = other.tools[0]
    await put_secrets(registry, agent, crm.agent_tool_id, {"token": "mine"})
    await put_secrets(registry, other, foreign.agent_tool_id, {"token": "theirs"})

    reply = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id),
        [crm.agent_tool_id, foreign.agent_tool_id],
    )

    assert reply.error is None
    assert [(e.agent_tool_id, e.code) for e in reply.tool_errors] == [
        (foreign.agent_tool_id, "not_bound")
    ]
    released = worker.open(reply).credentials
    assert [c.agent_tool_id for c in released] == [crm.agent_tool_id]
    assert b"theirs" not in worker.last_raw_reply


async def test_a_tool_never_connected_is_not_connected_without_failing_the_others(
    agents: Agents, worker: Worker, registry: NatsClient
) -> None:
    crm, calendar = binding("api_key"), binding("oauth2", "google_calendar")
    agent = await agents.create(tools=[crm, calendar])
    await put_secrets(registry, agent, crm.agent_tool_id, {"token": "t"})

    reply = await worker.request(
        sign_grant(org_id=agent.org_id, agent_id=agent.agent_id),
        [crm.agent_tool_id, calendar.agent_tool_id],
    )

    assert [(e.agent_tool_id, e.code) for e in reply.tool_errors] == [
        (calendar.agent_tool_id, "not_connected")
    ]
    assert [c.agent_tool_id for c in worker.open(reply).credentials] == [crm.agent_tool_id]


@pytest.mark.parametrize("how", ["ended", "failed"])
async def test_after_the_call_ends_its_grant_is_refused_as_call_ended(
    agents: Agents,
    worker: Worker,
    registry: NatsClient,
    nats_ops: NatsClient,
    toolvault: ToolVault,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = await live_call_with_api_key(agents, registry)
    agent, crm, call_sid, grant = call.agent, call.crm, call.call_sid, call.grant
    assert (await worker.request(grant, [crm.agent_tool_id])).error is None

    js = nats_ops.jetstream()
    await bus.ensure_stream(js, CALLS_STREAM)
    common = {
        "event_id": uuid.uuid4().hex,
        "call_sid": call_sid,
        "org_id": agent.org_id,
        "agent_id": agent.agent_id,
        "at": datetime.now(UTC),
    }
    if how == "ended":
        await js.publish(CALL_ENDED_SUBJECT, encode(CallEnded(status="completed", **common)))
    else:
        await js.publish(CALL_FAILED_SUBJECT, encode(CallFailed(reason="sip leg lost", **common)))
    revoked = toolvault.metrics.revocations
    await until_revoked(toolvault, call_sid, monkeypatch)
    assert revoked._value.get() >= 1

    reply = await worker.request(grant, [crm.agent_tool_id])

    assert reply.error is not None and reply.error.code == "call_ended"


async def test_a_malformed_request_gets_bad_request_naming_the_field(
    worker: Worker, toolvault: ToolVault
) -> None:
    message = await worker.nats.request("toolvault.v1.release", b'{"grant": "x"}', timeout=10)
    reply = decode(
        message.data,
        __import__("voiceagents.contracts.toolvault", fromlist=["x"]).CredentialReleaseReply,
    )

    assert reply.error is not None and reply.error.code == "bad_request"
    assert "worker_public_key" in reply.error.message or "agent_tool_ids" in reply.error.message
