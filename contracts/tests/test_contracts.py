"""Every contract message survives the wire, tolerates newer senders and rejects bad payloads."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceagents.contracts import agents, calls, registry, tools, toolvault
from voiceagents.contracts.codec import decode, decode_union, encode

pytestmark = pytest.mark.unit

MESSAGE_TYPES: list[type[msgspec.Struct]] = [
    tools.HttpRequestTemplate,
    tools.ToolFunctionSpec,
    tools.PlatformToolSpec,
    tools.CatalogSyncRequest,
    tools.CatalogSyncReply,
    agents.ToolBinding,
    agents.AgentRuntimeConfig,
    agents.PhoneNumberEntry,
    registry.RegistryEvent,
    calls.CallContext,
    calls.CallGrantClaims,
    calls.DispatchMetadata,
    calls.CallStarted,
    calls.AgentJoined,
    calls.ToolInvoked,
    calls.TranscriptTurn,
    calls.CallTransferred,
    calls.CallEnded,
    calls.CallFailed,
    toolvault.ReleaseError,
    toolvault.CredentialReleaseRequest,
    toolvault.CredentialReleaseReply,
    toolvault.ToolCredentials,
    toolvault.ReleasedCredentials,
    toolvault.OAuthStartRequest,
    toolvault.OAuthStartReply,
    toolvault.CredentialConnected,
    toolvault.CredentialRefreshed,
    toolvault.CredentialRefreshFailed,
    toolvault.CredentialsReleased,
]

_json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_datetimes = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)


def strategy_for(info: mi.Type) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for any msgspec type, read from msgspec's own type introspection."""
    match info:
        case mi.StructType():
            fields = {f.name: strategy_for(f.type) for f in info.fields}
            return st.builds(info.cls, **fields)
        case mi.StrType():
            return st.text(max_size=20)
        case mi.IntType():
            return st.integers(-(2**53), 2**53)
        case mi.FloatType():
            return st.floats(allow_nan=False, allow_infinity=False, width=64)
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.DateTimeType():
            return _datetimes
        case mi.LiteralType():
            return st.sampled_from(info.values)
        case mi.ListType():
            return st.lists(strategy_for(info.item_type), max_size=3)
        case mi.DictType():
            return st.dictionaries(
                strategy_for(info.key_type), strategy_for(info.value_type), max_size=3
            )
        case mi.UnionType():
            return st.one_of([strategy_for(t) for t in info.types])
        case mi.AnyType():
            return _json_values
    raise AssertionError(f"no strategy for {info!r}")


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_message_round_trips_through_json(
    message_type: type[msgspec.Struct], data: st.DataObject
) -> None:
    message = data.draw(strategy_for(mi.type_info(message_type)))
    assert decode(encode(message), message_type) == message


def test_call_events_decode_by_their_kind_tag() -> None:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    event = calls.ToolInvoked(
        event_id="e1",
        call_sid="CA1",
        org_id="o",
        agent_id="a",
        at=at,
        tool_name="google_calendar",
        function="create_event",
        outcome="ok",
        duration_ms=12.5,
    )
    decoded = decode_union(encode(event), calls.AnyCallEvent)
    assert isinstance(decoded, calls.ToolInvoked)
    assert calls.CALL_EVENT_SUBJECTS[type(decoded)] == "calls.v1.tool_invoked"


def test_older_consumer_accepts_message_with_new_field() -> None:
    newer = {
        "agent_id": "a1",
        "org_id": "o1",
        "version": 3,
        "name": "Ava",
        "system_prompt": "Be kind.",
        "tools": [],
        "field_added_next_year": {"nested": True},
    }
    config = decode(encode(newer), agents.AgentRuntimeConfig)
    assert config.name == "Ava" and config.version == 3


def test_message_missing_new_optional_fields_gets_defaults() -> None:
    older = {"agent_id": "a1", "org_id": "o1", "version": 1, "name": "Ava", "system_prompt": "x"}
    config = decode(encode(older), agents.AgentRuntimeConfig)
    assert config.greeting == agents.DEFAULT_GREETING
    assert config.greeting_text() == "Hello, this is Ava. How can I help you today?"


@pytest.mark.parametrize(
    ("payload", "message_type", "field"),
    [
        (
            b'{"phone_number":"+1","agent_id":"a","org_id":"o","version":"one"}',
            agents.PhoneNumberEntry,
            "$.version",
        ),
        (
            b'{"grant":"g","agent_tool_ids":[]}',
            toolvault.CredentialReleaseRequest,
            "worker_public_key",
        ),
        (b'{"code":"made_up","message":"m"}', toolvault.ReleaseError, "$.code"),
        (
            b'{"name":"t","description":"d","functions":[{"name":3,"description":"d"}]}',
            tools.PlatformToolSpec,
            "$.functions[0].name",
        ),
    ],
)
def test_invalid_payload_names_the_field(
    payload: bytes, message_type: type[msgspec.Struct], field: str
) -> None:
    with pytest.raises(
        msgspec.ValidationError, match=field.replace("[", r"\[").replace("$", r"\$")
    ):
        decode(payload, message_type)


def test_room_name_matches_livekit_sip_callee_rule() -> None:
    assert calls.room_name("CA0123") == "call_CA0123"
    assert agents.phone_number_key("+14155550100") == "14155550100"
