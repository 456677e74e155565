"""Stand-in for LiveKit's SIP Twirp API (`/twirp/livekit.SIP/*`), for tests only.

The `--dev` LiveKit server refuses the SIP API without Redis ("sip not connected"), so the
request shapes `provision-sip` sends are checked against this: protobuf bodies decoded with
livekit-protocol's own messages, trunks and rules kept in memory like LiveKit keeps them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from aiohttp import web
from google.protobuf.message import Message
from livekit import api


@dataclass
class SipApiStandIn:
    trunks: dict[str, api.SIPInboundTrunkInfo] = field(default_factory=dict)
    rules: dict[str, api.SIPDispatchRuleInfo] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twirp/livekit.SIP/{method}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls.append(method)
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"code": "unauthenticated", "msg": "no token"}, status=401)
        body = await request.read()
        reply = self._dispatch(method, body)
        if reply is None:
            return web.json_response({"code": "bad_route", "msg": method}, status=404)
        return web.Response(body=reply.SerializeToString(), content_type="application/protobuf")

    def _dispatch(self, method: str, body: bytes) -> Message | None:
        if method == "ListSIPInboundTrunk":
            return api.ListSIPInboundTrunkResponse(items=list(self.trunks.values()))
        if method == "CreateSIPInboundTrunk":
            trunk = api.CreateSIPInboundTrunkRequest.FromString(body).trunk
            trunk.sip_trunk_id = f"ST_{next(self._ids)}"
            self.trunks[trunk.sip_trunk_id] = trunk
            return trunk
        if method == "UpdateSIPInboundTrunk":
            update = api.UpdateSIPInboundTrunkRequest.FromString(body)
            trunk = update.replace
            trunk.sip_trunk_id = update.sip_trunk_id
            self.trunks[update.sip_trunk_id] = trunk
            return trunk
        if method == "ListSIPDispatchRule":
            return api.ListSIPDispatchRuleResponse(items=list(self.rules.values()))
        if method == "CreateSIPDispatchRule":
            create = api.CreateSIPDispatchRuleRequest.FromString(body)
            rule = create.dispatch_rule
            rule.sip_dispatch_rule_id = f"SDR_{next(self._ids)}"
            self.rules[rule.sip_dispatch_rule_id] = rule
            return rule
        if method == "UpdateSIPDispatchRule":
            update_rule = api.UpdateSIPDispatchRuleRequest.FromString(body)
            rule = update_rule.replace
            rule.sip_dispatch_rule_id = update_rule.sip_dispatch_rule_id
            self.rules[update_rule.sip_dispatch_rule_id] = rule
            return rule
        return None
