"""`provision-sip`: LiveKit SIP's inbound trunk and callee dispatch rule, idempotently."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from livekit import api

from voiceagents.devstack.servers import LiveKitServer
from voiceagents.gateway.sip import ROOM_PREFIX, provision_sip

from .livekit_sip_standin import SipApiStandIn

pytestmark = pytest.mark.integration


@pytest.fixture
async def sip_api() -> AsyncIterator[tuple[SipApiStandIn, str]]:
    standin = SipApiStandIn()
    runner = web.AppRunner(standin.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield standin, f"http://127.0.0.1:{port}"
    await runner.cleanup()


TWILIO_SIGNALLING = ["54.172.60.0/30", "54.244.51.0/30"]


async def test_provisioning_creates_a_trunk_with_the_twiml_credentials_and_a_callee_rule(
    sip_api: tuple[SipApiStandIn, str],
) -> None:
    standin, url = sip_api
    async with api.LiveKitAPI(url, "key", "s" * 32) as lk:
        result = await provision_sip(
            lk, username="twilio-trunk", password="pw-1", allowed_addresses=TWILIO_SIGNALLING
        )

    assert result.trunk_created and result.rule_created
    trunk = standin.trunks[result.trunk_id]
    assert (trunk.auth_username, trunk.auth_password) == ("twilio-trunk", "pw-1")
    assert list(trunk.allowed_addresses) == TWILIO_SIGNALLING
    assert list(trunk.numbers) == []
    rule = standin.rules[result.rule_id]
    assert list(rule.trunk_ids) == [result.trunk_id]
    assert rule.rule.WhichOneof("rule") == "dispatch_rule_callee"
    assert rule.rule.dispatch_rule_callee.room_prefix == ROOM_PREFIX == "call"
    assert not rule.rule.dispatch_rule_callee.randomize


async def test_provisioning_twice_changes_nothing_and_new_settings_update_in_place(
    sip_api: tuple[SipApiStandIn, str],
) -> None:
    standin, url = sip_api
    async with api.LiveKitAPI(url, "key", "s" * 32) as lk:
        first = await provision_sip(
            lk, username="twilio-trunk", password="pw-1", allowed_addresses=[]
        )
        second = await provision_sip(
            lk, username="twilio-trunk", password="pw-1", allowed_addresses=[]
        )
        rotated = await provision_sip(
            lk, username="twilio-trunk", password="pw-2", allowed_addresses=TWILIO_SIGNALLING
        )

    assert (second.trunk_id, second.rule_id) == (first.trunk_id, first.rule_id)
    assert not second.trunk_created and not second.rule_created
    assert (rotated.trunk_id, rotated.rule_id) == (first.trunk_id, first.rule_id)
    assert len(standin.trunks) == 1 and len(standin.rules) == 1
    assert standin.trunks[first.trunk_id].auth_password == "pw-2"
    assert list(standin.trunks[first.trunk_id].allowed_addresses) == TWILIO_SIGNALLING


async def test_the_dev_livekit_server_refuses_the_sip_api_with_a_clear_error(
    livekit_server: LiveKitServer,
) -> None:
    async with api.LiveKitAPI(
        livekit_server.url, livekit_server.api_key, livekit_server.api_secret
    ) as lk:
        with pytest.raises(api.TwirpError) as refused:
            await provision_sip(lk, username="u", password="p", allowed_addresses=[])

    assert "sip" in refused.value.message.lower()
