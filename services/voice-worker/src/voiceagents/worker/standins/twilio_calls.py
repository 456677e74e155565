"""STAND-IN for Twilio's REST API (https://api.twilio.com) — not Twilio — for live-call updates.

- `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` (form-encoded `Twiml`, `Url`,
  `Status`) → the Call resource JSON, as Twilio's `calls(sid).update(twiml=...)` expects.
  An unknown call gets 404 (code 20404); a call that is not in progress gets 400 (code 21220).

Auth: HTTP Basic with the account SID and auth token (or an API key SID and secret), as the
`twilio` library sends it; anything else gets 401 (code 20003).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BasicAuth, web

from voiceagents.worker.standins.server import ApiError, StandInServer


@dataclass
class LiveCall:
    sid: str
    status: str = "in-progress"
    # Every update, as received: the form fields (Twiml, Url, Status...).
    updates: list[dict[str, str]] = field(default_factory=list)
    # When each update arrived (time.monotonic()).
    updated_at: list[float] = field(default_factory=list)


def _twilio_error(status: int, code: int, message: str) -> ApiError:
    return ApiError(
        web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
        )
    )


class TwilioStandIn(StandInServer):
    """A local stand-in for the Calls resource of Twilio's REST API."""

    def __init__(
        self, *, account_sid: str, auth_token: str, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(host=host, port=port)
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.calls: dict[str, LiveCall] = {}

    @property
    def base_url(self) -> str:
        return self.origin

    def add_call(self, call_sid: str, status: str = "in-progress") -> LiveCall:
        self.calls[call_sid] = LiveCall(sid=call_sid, status=status)
        return self.calls[call_sid]

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._update_call)]

    async def _update_call(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        try:
            login = BasicAuth.decode(auth) if auth else None
        except ValueError:
            login = None
        account = request.match_info["account"]
        if (
            login is None
            or account != self.account_sid
            or (login.login, login.password) != (self.account_sid, self._auth_token)
        ):
            raise _twilio_error(401, 20003, "Authenticate")
        call = self.calls.get(request.match_info["call"])
        if call is None:
            raise _twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        form = {key: str(value) for key, value in (await request.post()).items()}
        if call.status != "in-progress" and ("Twiml" in form or "Url" in form):
            raise _twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.")
        call.updates.append(form)
        call.updated_at.append(time.monotonic())
        if form.get("Status") in ("completed", "canceled"):
            call.status = form["Status"]
        return web.json_response(self._resource(call))

    def _resource(self, call: LiveCall) -> dict[str, Any]:
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "status": call.status,
            "direction": "inbound",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call.sid}.json",
        }
