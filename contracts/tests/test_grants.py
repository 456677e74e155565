"""A call grant verifies for each of its audiences, and nothing else does."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from voiceagents.contracts.calls import REGISTRY_AUDIENCE, TOOLVAULT_AUDIENCE, CallGrantClaims
from voiceagents.contracts.grants import GrantRejected, GrantVerifier, decode_public_keys

pytestmark = pytest.mark.unit

KEY = Ed25519PrivateKey.generate()
PUBLIC = {"gw-1": KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)}


def grant(key: Ed25519PrivateKey = KEY, kid: str = "gw-1", **overrides: Any) -> str:
    """Signed as the gateway signs: every field of CallGrantClaims, defaults included."""
    now = int(time.time())
    claims = CallGrantClaims(
        room="call_CA1",
        call_sid="CA1",
        org_id="org",
        agent_id="agent",
        iat=now,
        exp=now + 60,
        jti="j",
    )
    payload = {name: getattr(claims, name) for name in claims.__struct_fields__} | overrides
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid})


@pytest.mark.parametrize("audience", [TOOLVAULT_AUDIENCE, REGISTRY_AUDIENCE])
def test_a_gateway_grant_verifies_for_each_audience(audience: str) -> None:
    claims = GrantVerifier(PUBLIC, audience=audience).verify(grant())

    assert (claims.org_id, claims.agent_id, claims.call_sid) == ("org", "agent", "CA1")


def test_a_grant_for_tool_vault_alone_still_verifies_there_and_not_at_the_registry() -> None:
    older = grant(aud=TOOLVAULT_AUDIENCE)

    assert GrantVerifier(PUBLIC, audience=TOOLVAULT_AUDIENCE).verify(older).aud == "tool-vault"
    with pytest.raises(GrantRejected) as refused:
        GrantVerifier(PUBLIC, audience=REGISTRY_AUDIENCE).verify(older)
    assert refused.value.code == "grant_invalid"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (grant(key=Ed25519PrivateKey.generate()), "grant_invalid"),  # another key, same kid
        (grant(kid="gw-2"), "grant_invalid"),  # unknown key id
        (grant(iss="someone"), "grant_invalid"),
        (grant(exp=int(time.time()) - 60), "grant_expired"),
        (grant().rsplit(".", 1)[0] + ".AAAA", "grant_invalid"),  # signature cut
        ("not a grant", "grant_invalid"),
    ],
)
def test_a_grant_that_does_not_hold_is_refused_with_its_code(token: str, code: str) -> None:
    with pytest.raises(GrantRejected) as refused:
        GrantVerifier(PUBLIC, audience=REGISTRY_AUDIENCE).verify(token)

    assert refused.value.code == code


def test_public_keys_decode_and_a_bad_one_is_named() -> None:
    good = base64.b64encode(PUBLIC["gw-1"]).decode()

    assert decode_public_keys({"gw-1": good}) == PUBLIC
    with pytest.raises(ValueError, match="'gw-2'"):
        decode_public_keys({"gw-1": good, "gw-2": base64.b64encode(b"short").decode()})
