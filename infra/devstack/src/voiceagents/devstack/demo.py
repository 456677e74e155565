"""The demo's agent and phone calls against a running `Stack`, shared by `make demo`, `make call`
and the end-to-end tests.

- `Admin` talks to the registry's REST API as an admin would: an organization, an agent with a
  phone number, the Google Calendar tool (pointed at the local stand-in), and the calendar
  connected through the real OAuth consent flow (registry → tool-vault → provider stand-in).
- `PhoneCall` is one simulated call: Twilio's signed webhook to the gateway, the caller joining
  the room the TwiML names as LiveKit SIP would, speaking espeak-ng audio, and every call event
  of this call read live from the `CALLS` stream.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import nats
from livekit import api
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from voiceagents.devstack.phone import SimulatedCaller, TwilioSimulator, TwimlAnswer, sip_user

CALENDAR_TOOL = "google_calendar"
BOOKING_LINE = "Hi! Could you book me a haircut tomorrow at 2 pm?"
GOODBYE_LINE = "Great, thank you. Goodbye!"
CALLER_NUMBER = "+12125550123"

# What the offline stand-in model does with each caller turn (it hears speech, not words, so
# turns are taken in order). Gemini needs no script: it understands the caller.
OFFLINE_SCRIPT_BOOK: dict[str, Any] = {
    "default": {
        "turns": [
            {
                "caller": BOOKING_LINE,
                "tool_calls": [
                    {
                        "name": "create_event",
                        "arguments": {"summary": "Haircut", "start_time": "tomorrow at 2pm"},
                    }
                ],
                "after_tools": "{answer}",
            },
            {"caller": GOODBYE_LINE, "say": "Thank you for calling. Goodbye!"},
        ]
    }
}


def write_offline_script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(OFFLINE_SCRIPT_BOOK, indent=2))
    return path


class AdminError(RuntimeError):
    """The registry refused a request; the message has its problem details."""


@dataclass
class DemoAgent:
    org_id: str
    agent_id: str
    agent_tool_id: str
    name: str
    phone_number: str


class Admin:
    """The registry's admin REST API with a platform-admin key."""

    def __init__(self, registry_url: str, admin_key: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=registry_url,
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=10,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AdminError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    async def create_organization(self, name: str) -> str:
        org = await self._json("POST", "/api/v1/organizations", json={"name": name})
        return str(org["id"])

    async def create_agent(self, **fields: Any) -> dict[str, Any]:
        agent: dict[str, Any] = await self._json("POST", "/api/v1/agents", json=fields)
        return agent

    async def agent(self, agent_id: str) -> dict[str, Any]:
        agent: dict[str, Any] = await self._json("GET", f"/api/v1/agents/{agent_id}")
        return agent

    async def update_agent(self, agent_id: str, **changes: Any) -> dict[str, Any]:
        current = await self._json("GET", f"/api/v1/agents/{agent_id}")
        body = {**changes, "version": current["version"]}
        agent: dict[str, Any] = await self._json("PUT", f"/api/v1/agents/{agent_id}", json=body)
        return agent

    async def wait_for_platform_tool(self, name: str, timeout: float = 30.0) -> None:
        """The worker reports its tools when it starts; wait until the registry has them."""
        async with asyncio.timeout(timeout):
            while True:
                tools = await self._json("GET", "/api/v1/tools/platform")
                items = tools["items"] if isinstance(tools, dict) else tools
                if any(tool["name"] == name and tool["available"] for tool in items):
                    return
                await asyncio.sleep(0.2)

    async def bind_tool(self, agent_id: str, tool_name: str, config: dict[str, Any]) -> str:
        body = {"agent_id": agent_id, "tool_name": tool_name, "config": config}
        tool = await self._json("POST", "/api/v1/tools/agent", json=body)
        return str(tool["id"])

    async def agent_tool(self, agent_id: str, agent_tool_id: str) -> dict[str, Any]:
        tools = await self._json("GET", f"/api/v1/tools/agent/{agent_id}")
        items = tools["items"] if isinstance(tools, dict) else tools
        return next(t for t in items if t["id"] == agent_tool_id)

    async def update_agent_tool(
        self, agent_id: str, agent_tool_id: str, **changes: Any
    ) -> dict[str, Any]:
        current = await self.agent_tool(agent_id, agent_tool_id)
        body = {**changes, "version": current["version"]}
        tool: dict[str, Any] = await self._json(
            "PUT", f"/api/v1/tools/agent/{agent_tool_id}", json=body
        )
        return tool

    async def connect_oauth(self, tool_name: str, agent_tool_id: str) -> None:
        """The admin's browser through the consent flow: registry → provider → tool-vault."""
        start = await self.http.get(
            f"/api/v1/tools/auth/{tool_name}", params={"agent_tool_id": agent_tool_id}
        )
        if start.status_code != 302:
            raise AdminError(f"OAuth start: {start.status_code} {start.text}")
        async with httpx.AsyncClient(timeout=10) as browser:
            consent = await browser.get(start.headers["location"])
            if consent.status_code != 302:
                raise AdminError(f"OAuth consent: {consent.status_code} {consent.text}")
            callback = await browser.get(consent.headers["location"])
            if callback.status_code >= 400:
                raise AdminError(f"OAuth callback: {callback.status_code} {callback.text}")

    async def call(self, call_sid: str) -> dict[str, Any] | None:
        response = await self.http.get(f"/api/v1/calls/{call_sid}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise AdminError(f"GET call {call_sid}: {response.status_code} {response.text}")
        call: dict[str, Any] = response.json()
        return call

    async def wait_for_call(
        self,
        call_sid: str,
        until: Callable[[dict[str, Any]], bool] = lambda call: call["status"] != "in_progress",
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """The call log entry once `until` holds (call events reach the log asynchronously)."""
        async with asyncio.timeout(timeout):
            while True:
                call = await self.call(call_sid)
                if call is not None and until(call):
                    return call
                await asyncio.sleep(0.1)


def random_phone_number() -> str:
    return "+1415" + f"{secrets.randbelow(10_000_000):07d}"


async def create_demo_agent(
    admin: Admin,
    calendar_url: str,
    *,
    name: str = "Ava",
    phone_number: str | None = None,
    org_name: str | None = None,
    active: bool = True,
    greeting: str = "Hello, this is {agent_name} from the salon. How can I help you today?",
) -> DemoAgent:
    """An organization and an agent that books appointments in the (stand-in) Google Calendar."""
    phone_number = phone_number or random_phone_number()
    # Organization names are unique: every run of `make call`/the tests gets its own.
    org_id = await admin.create_organization(org_name or f"Demo Salon {secrets.token_hex(3)}")
    agent = await admin.create_agent(
        organization_id=org_id,
        name=name,
        system_prompt="You book haircuts for the salon. Be brief and friendly.",
        greeting=greeting,
        phone_number=phone_number,
        is_active=active,
    )
    await admin.wait_for_platform_tool(CALENDAR_TOOL)
    agent_tool_id = await admin.bind_tool(
        agent["id"],
        CALENDAR_TOOL,
        {
            "timezone": "America/New_York",
            "api_base_url": calendar_url,
            # The stand-in listens on loopback, which the tool's SSRF guard refuses otherwise.
            "network_allowlist": ["127.0.0.1/32"],
        },
    )
    await admin.connect_oauth(CALENDAR_TOOL, agent_tool_id)
    return DemoAgent(
        org_id=org_id,
        agent_id=agent["id"],
        agent_tool_id=agent_tool_id,
        name=name,
        phone_number=phone_number,
    )


@dataclass
class PhoneCall:
    """One simulated phone call against the stack described by `conn` (Stack.connection())."""

    conn: dict[str, Any]
    to_number: str
    from_number: str = CALLER_NUMBER
    call_sid: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    # Called with each readable line of the live transcript, as it happens.
    on_line: Callable[[str], None] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    answer: TwimlAnswer | None = None
    caller: SimulatedCaller | None = None
    greeting_after_join_ms: float | None = None
    started_at: float = field(default_factory=time.perf_counter)
    _twilio: TwilioSimulator | None = None
    _nc: NatsClient | None = None
    _new_event: asyncio.Event = field(default_factory=asyncio.Event)

    def _print(self, text: str) -> None:
        if self.on_line is not None:
            self.on_line(f"[{time.perf_counter() - self.started_at:7.2f}s] {text}")

    async def __aenter__(self) -> Self:
        self._nc = await nats.connect(
            self.conn["nats_url"],
            user="ops",
            password=self.conn["nats_ops_password"],
            inbox_prefix="_INBOX_ops",
        )
        await self._nc.subscribe("calls.v1.>", cb=self._on_event)
        self._twilio = TwilioSimulator(
            gateway_url=self.conn["gateway_url"],
            public_base_url=self.conn["gateway_url"],
            auth_token=self.conn["twilio_auth_token"],
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.caller is not None:
            await self.caller.hang_up()
        if self._twilio is not None:
            await self._twilio.aclose()
        if self._nc is not None:
            await self._nc.close()

    async def _on_event(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        if event.get("call_sid") != self.call_sid:
            return
        self.events.append(event)
        self._new_event.set()
        kind = event.get("kind")
        if kind == "transcript":
            entry = event["entry"]
            self._print(f"{entry['role']:>6}: {entry['text']}")
        elif kind == "tool_invoked":
            self._print(
                f"  tool: {event['tool_name']}.{event['function']} -> {event['outcome']} "
                f"in {event['duration_ms']:.0f} ms"
            )
        elif kind == "agent_joined":
            self._print(f" event: agent joined (setup {event['setup_ms']:.0f} ms)")
        elif kind in ("ended", "failed"):
            # Twilio's status callback does not say who hung up: the gateway's event has a reason.
            ended_by = event.get("ended_by", "unknown")
            detail = f"by {ended_by}" if ended_by != "unknown" else event.get("reason", "")
            self._print(f" event: call {kind} ({event.get('source')}) {detail}".rstrip())

    async def dial(self, routed_within: float = 10.0) -> TwimlAnswer:
        """Twilio's signed incoming-call webhook; the gateway's TwiML answer.

        A new number reaches the gateway's memory through NATS KV moments after the registry
        saved it; until `routed_within` has passed, "not in service" is tried again with a new
        CallSid (the gateway answers a CallSid the same way every time)."""
        assert self._twilio is not None
        deadline = time.perf_counter() + routed_within
        while True:
            self.started_at = time.perf_counter()
            self.answer = await self._twilio.incoming(
                self.call_sid, self.from_number, self.to_number
            )
            if not _not_in_service(self.answer) or time.perf_counter() >= deadline:
                break
            self.call_sid = "CA" + secrets.token_hex(16)
            await asyncio.sleep(0.05)
        where = self.answer.sip_uri or " ".join(self.answer.spoken)
        self._print(f"webhook answered in {self.answer.elapsed_ms:.0f} ms: {where}")
        return self.answer

    @property
    def room(self) -> str:
        assert self.answer is not None and self.answer.sip_uri is not None
        return "call_" + sip_user(self.answer.sip_uri)

    async def join(self, greeting_timeout: float = 30.0) -> float:
        """Join as LiveKit SIP would and wait for the greeting; ms from joining to its audio."""
        self.caller = SimulatedCaller(
            livekit_url=self.conn["livekit_url"],
            api_key=self.conn["livekit_api_key"],
            api_secret=self.conn["livekit_api_secret"],
            room=self.room,
            call_sid=self.call_sid,
            from_number=self.from_number,
            to_number=self.to_number,
        )
        joined = await self.caller.join()
        self._print(f"caller joined room {self.room}")
        heard = await self.caller.wait_for_agent_speech(greeting_timeout)
        self.greeting_after_join_ms = (heard.started_at - joined) * 1000
        self._print(f"greeting audio heard {self.greeting_after_join_ms:.0f} ms after joining")
        await self.caller.wait_until_agent_quiet(greeting_timeout)
        await self.wait_for_agent_line(after=0, timeout=greeting_timeout)
        return self.greeting_after_join_ms

    async def say(self, line: str) -> None:
        assert self.caller is not None
        self._print(f"caller speaks (audio): {line}")
        await self.caller.say(line)

    def agent_lines(self) -> list[str]:
        return [
            e["entry"]["text"]
            for e in self.events
            if e.get("kind") == "transcript" and e["entry"]["role"] == "agent"
        ]

    def tool_calls(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "tool_invoked"]

    async def wait_for_event(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = next((e for e in self.events if matches(e)), None)
                if found is not None:
                    return found
                self._new_event.clear()
                await self._new_event.wait()

    async def wait_for_agent_line(self, after: int, timeout: float = 30.0) -> str:
        """The agent's next transcript line once more than `after` agent lines exist."""
        async with asyncio.timeout(timeout):
            while len(self.agent_lines()) <= after:
                self._new_event.clear()
                await self._new_event.wait()
        return self.agent_lines()[after]

    async def hang_up(self) -> None:
        """The caller hangs up; Twilio then reports the call completed."""
        assert self._twilio is not None
        answered_at = self.started_at
        if self.caller is not None:
            answered_at = self.caller.joined_at or answered_at
            await self.caller.hang_up()
            self.caller = None
        self._print("caller hung up")
        duration = round(time.perf_counter() - answered_at)
        await self._twilio.status(self.call_sid, "completed", duration_seconds=duration)

    async def room_exists(self) -> bool:
        async with api.LiveKitAPI(
            self.conn["livekit_url"].replace("ws://", "http://"),
            self.conn["livekit_api_key"],
            self.conn["livekit_api_secret"],
        ) as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[self.room]))
        return bool(rooms.rooms)


def _not_in_service(answer: TwimlAnswer) -> bool:
    return answer.sip_uri is None and any("not in service" in line for line in answer.spoken)


async def booking_call(
    conn: dict[str, Any], to_number: str, on_line: Callable[[str], None] | None = None
) -> str:
    """The demo's call: greeting, a booking (a calendar tool call), goodbye, hang up."""
    async with PhoneCall(conn, to_number, on_line=on_line) as call:
        answer = await call.dial()
        if answer.sip_uri is None:
            raise RuntimeError(f"the gateway did not connect the call: {answer.body}")
        await call.join()
        heard = len(call.agent_lines())
        await call.say(BOOKING_LINE)
        await call.wait_for_event(lambda e: e.get("kind") == "tool_invoked", timeout=30)
        await call.wait_for_agent_line(after=heard, timeout=30)
        heard = len(call.agent_lines())
        await call.say(GOODBYE_LINE)
        await call.wait_for_agent_line(after=heard, timeout=30)
        await call.hang_up()
        # Both ends are part of the story: Twilio's (through the gateway) and the worker's.
        for source in ("gateway", "worker"):
            await call.wait_for_event(_ended_by(source), timeout=15)
        return call.call_sid


def _ended_by(source: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event.get("kind") == "ended" and event.get("source") == source
