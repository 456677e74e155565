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


def claims(**overrides: Any) -> dict[str, Any]:
    """Every field of CallGrantClaims as the gateway signs them, defaults included."""
    now = int(time.time())
    grant_claims = CallGrantClaims(
        room="call_CA1",
        call_sid="CA1",
        org_id="org",
        agent_id="agent",
        iat=now,
        exp=now + 60,
        jti="j",
    )
    fields = grant_claims.__struct_fields__
    return {name: getattr(grant_claims, name) for name in fields} | overrides


def grant(key: Ed25519PrivateKey = KEY, kid: str = "gw-1", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="EdDSA", headers={"kid": kid})


def signed_without(claim: str) -> str:
    payload = claims()
    del payload[claim]
    return jwt.encode(payload, KEY, algorithm="EdDSA", headers={"kid": "gw-1"})


REQUIRED_CLAIMS = ["aud", "iss", "iat", "exp", "jti", "call_sid", "org_id", "agent_id", "room"]


@pytest.mark.parametrize("audience", [TOOLVAULT_AUDIENCE, REGISTRY_AUDIENCE])
def test_a_gateway_grant_verifies_for_each_audience(audience: str) -> None:
    verified = GrantVerifier(PUBLIC, audience=audience).verify(grant())

    assert (verified.org_id, verified.agent_id, verified.call_sid) == ("org", "agent", "CA1")


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
        (grant(aud=["someone", "else"]), "grant_invalid"),
        (grant(iat=int(time.time()) + 600), "grant_invalid"),  # issued in the future
        (grant(exp=int(time.time()) - 60), "grant_expired"),
        (grant(exp="tomorrow"), "grant_invalid"),
        (grant().rsplit(".", 1)[0] + ".AAAA", "grant_invalid"),  # signature cut
        ("not a grant", "grant_invalid"),
        # The algorithm is EdDSA or nothing: no HMAC keyed with the public key, no "none".
        (
            jwt.encode(claims(), PUBLIC["gw-1"], algorithm="HS256", headers={"kid": "gw-1"}),
            "grant_invalid",
        ),
        (jwt.encode(claims(), None, algorithm="none", headers={"kid": "gw-1"}), "grant_invalid"),
        *[(signed_without(claim), "grant_invalid") for claim in REQUIRED_CLAIMS],
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
