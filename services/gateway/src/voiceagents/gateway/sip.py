"""`provision-sip`: LiveKit SIP's inbound trunk and *callee* dispatch rule, created or brought
up to date idempotently (found by name, replaced in place).

The trunk accepts Twilio's `<Dial><Sip>` leg with the same username and password the TwiML
carries, and only from the addresses in `VA_GATEWAY_SIP_ALLOWED_ADDRESSES` when that is set.
Every TwiML bridge answer carries those credentials, so anyone who ever saw one could otherwise
dial `sip:<CallSid>@<sip host>` and join a live call's room, or the room of a replayed signed
webhook; limited to Twilio's signalling addresses, the credentials are useless elsewhere.

The callee rule with room prefix `call` puts the caller into room `call_<user part>`
(LiveKit's `EvaluateDispatchRule`: prefix + "_" + the dialled SIP user), and the user part is
the CallSid, so the caller lands in exactly the room the gateway created for the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from livekit import api

TRUNK_NAME = "voiceagents-twilio-inbound"
RULE_NAME = "voiceagents-call-rooms"
ROOM_PREFIX = "call"


@dataclass(frozen=True)
class Provisioned:
    trunk_id: str
    rule_id: str
    trunk_created: bool
    rule_created: bool


def trunk_spec(
    username: str, password: str, allowed_addresses: Sequence[str]
) -> api.SIPInboundTrunkInfo:
    return api.SIPInboundTrunkInfo(
        name=TRUNK_NAME,
        # Any dialled number: the user part is a CallSid, and the credentials admit the call.
        numbers=[],
        allowed_addresses=list(allowed_addresses),
        auth_username=username,
        auth_password=password,
        # Twilio's CallSid travels as a SIP header; keep it on the participant for the worker.
        headers_to_attributes={"X-Twilio-CallSid": "sip.twilio.callSid"},
    )


def rule_spec(trunk_id: str) -> api.SIPDispatchRuleInfo:
    return api.SIPDispatchRuleInfo(
        name=RULE_NAME,
        trunk_ids=[trunk_id],
        rule=api.SIPDispatchRule(
            dispatch_rule_callee=api.SIPDispatchRuleCallee(room_prefix=ROOM_PREFIX, randomize=False)
        ),
    )


async def provision_sip(
    lk: api.LiveKitAPI, *, username: str, password: str, allowed_addresses: Sequence[str]
) -> Provisioned:
    trunks = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
    trunk = trunk_spec(username, password, allowed_addresses)
    existing_trunk = next((t for t in trunks.items if t.name == TRUNK_NAME), None)
    if existing_trunk is None:
        created = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=trunk))
        trunk_id, trunk_created = created.sip_trunk_id, True
    else:
        trunk_id, trunk_created = existing_trunk.sip_trunk_id, False
        await lk.sip.update_inbound_trunk(trunk_id, trunk)

    rules = await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
    rule = rule_spec(trunk_id)
    existing_rule = next((r for r in rules.items if r.name == RULE_NAME), None)
    if existing_rule is None:
        created_rule = await lk.sip.create_dispatch_rule(
            api.CreateSIPDispatchRuleRequest(dispatch_rule=rule)
        )
        rule_id, rule_created = created_rule.sip_dispatch_rule_id, True
    else:
        rule_id, rule_created = existing_rule.sip_dispatch_rule_id, False
        await lk.sip.update_dispatch_rule(rule_id, rule)
    return Provisioned(trunk_id, rule_id, trunk_created, rule_created)
