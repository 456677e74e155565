"""STAND-IN for the Google Calendar API v3 (https://www.googleapis.com/calendar/v3) — not Google.

Speaks the documented subset the calendar tool uses, with Google's paths, JSON bodies, OAuth
bearer auth and error shapes:

- `POST /calendar/v3/freeBusy` — `{timeMin, timeMax, items: [{id}]}` →
  `{kind: "calendar#freeBusy", calendars: {id: {busy: [{start, end}]}}}` (UTC times);
  an unknown calendar gets `errors: [{reason: "notFound"}]`.
- `GET /calendar/v3/calendars/{calendarId}/events?timeMin&timeMax` — events overlapping
  the window, ordered by start (`singleEvents=true` semantics: no recurrence here).
- `POST /calendar/v3/calendars/{calendarId}/events` — insert; `sendUpdates` is accepted.
- `GET|PATCH|DELETE /calendar/v3/calendars/{calendarId}/events/{eventId}` — a deleted event
  answers 410 `deleted`, an unknown one 404 `notFound`.

Auth: `Authorization: Bearer <token>`; `grant(token, scopes)` registers a token, `expire(token)`
makes it answer 401 `authError` as Google does for an expired access token. A request whose
token lacks the scope the method needs gets 403 `insufficientPermissions`.

Calendar `primary` (alias `owner@example.com`) exists from the start; `add_calendar(id)` adds
others. Cancelled and transparent ("free") events do not count as busy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from voiceagents.worker.standins.server import ApiError, StandInServer

SCOPE = "https://www.googleapis.com/auth/"
# Scopes that allow each kind of request (Google's API reference, per method).
FREEBUSY_SCOPES = frozenset(
    SCOPE + s
    for s in ("calendar", "calendar.readonly", "calendar.freebusy", "calendar.events.freebusy")
)
READ_EVENTS_SCOPES = frozenset(
    SCOPE + s
    for s in ("calendar", "calendar.readonly", "calendar.events", "calendar.events.readonly")
)
WRITE_EVENTS_SCOPES = frozenset(SCOPE + s for s in ("calendar", "calendar.events"))

OWNER_EMAIL = "owner@example.com"


@dataclass
class StoredEvent:
    id: str
    summary: str
    start: datetime
    end: datetime
    time_zone: str | None = None
    attendees: list[str] = field(default_factory=list)
    description: str = ""
    status: str = "confirmed"
    transparency: str = "opaque"
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def busy(self) -> bool:
        return self.status != "cancelled" and self.transparency != "transparent"

    def resource(self, calendar_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "calendar#event",
            "id": self.id,
            "etag": f'"{int(self.updated.timestamp() * 1000)}"',
            "status": self.status,
            "htmlLink": f"https://www.google.com/calendar/event?eid={self.id}",
            "created": rfc3339(self.created),
            "updated": rfc3339(self.updated),
            "summary": self.summary,
            "organizer": {"email": calendar_id, "self": True},
            "start": _when(self.start, self.time_zone),
            "end": _when(self.end, self.time_zone),
            "transparency": self.transparency,
        }
        if self.description:
            body["description"] = self.description
        if self.attendees:
            body["attendees"] = [
                {"email": email, "responseStatus": "needsAction"} for email in self.attendees
            ]
        return body


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _when(moment: datetime, time_zone: str | None) -> dict[str, str]:
    when = {"dateTime": rfc3339(moment)}
    if time_zone:
        when["timeZone"] = time_zone
    return when


def _error(status: int, reason: str, message: str, google_status: str = "") -> ApiError:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "errors": [{"domain": "global", "reason": reason, "message": message}],
    }
    if google_status:
        error["status"] = google_status
    return ApiError(web.json_response({"error": error}, status=status))


def _bad_request(message: str) -> ApiError:
    return _error(400, "badRequest", message)


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise _bad_request(f"Missing {name}.")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad_request(f"Bad Request: invalid {name} {value!r}") from None
    if moment.tzinfo is None:
        raise _bad_request(f"Bad Request: {name} needs a time zone offset")
    return moment.astimezone(UTC)


def _event_time(body: dict[str, Any], key: str) -> tuple[datetime, str | None]:
    when = body.get(key)
    if not isinstance(when, dict) or "dateTime" not in when:
        raise _bad_request(f"Missing {key} time.")
    zone = when.get("timeZone")
    return _parse_time(when["dateTime"], f"{key}.dateTime"), zone if isinstance(zone, str) else None


class GoogleCalendarStandIn(StandInServer):
    """A local stand-in for Google Calendar v3; `base_url` goes where googleapis.com would."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.calendars: dict[str, dict[str, StoredEvent]] = {"primary": {}}
        self.tokens: dict[str, frozenset[str]] = {}
        self.expired: set[str] = set()
        # Every request as (method, path), for tests that check what was (not) called.
        self.requests: list[tuple[str, str]] = []

    @property
    def base_url(self) -> str:
        return f"{self.origin}/calendar/v3"

    def grant(
        self, token: str, scopes: Iterable[str] = WRITE_EVENTS_SCOPES | FREEBUSY_SCOPES
    ) -> None:
        self.tokens[token] = frozenset(scopes)
        self.expired.discard(token)

    def expire(self, token: str) -> None:
        self.expired.add(token)

    def add_calendar(self, calendar_id: str) -> None:
        self.calendars.setdefault(calendar_id, {})

    def events(self, calendar_id: str = "primary") -> list[StoredEvent]:
        """Live (not cancelled) events, by start."""
        stored = self.calendars.get(self._resolve(calendar_id), {})
        return sorted(
            (e for e in stored.values() if e.status != "cancelled"), key=lambda e: e.start
        )

    def add_event(
        self, summary: str, start: datetime, end: datetime, calendar_id: str = "primary"
    ) -> StoredEvent:
        event = StoredEvent(id=uuid.uuid4().hex, summary=summary, start=start, end=end)
        self.calendars[self._resolve(calendar_id)][event.id] = event
        return event

    def routes(self) -> list[web.RouteDef]:
        prefix = "/calendar/v3"
        events = prefix + "/calendars/{calendar_id}/events"
        return [
            web.post(prefix + "/freeBusy", self._free_busy),
            web.get(events, self._list_events),
            web.post(events, self._insert_event),
            web.get(events + "/{event_id}", self._get_event),
            web.patch(events + "/{event_id}", self._patch_event),
            web.delete(events + "/{event_id}", self._delete_event),
        ]

    def _resolve(self, calendar_id: str) -> str:
        return "primary" if calendar_id == OWNER_EMAIL else calendar_id

    def _authorize(self, request: web.Request, allowed: frozenset[str]) -> None:
        self.requests.append((request.method, request.path))
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not token or token not in self.tokens or token in self.expired:
            raise _error(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                "UNAUTHENTICATED",
            )
        if not self.tokens[token] & allowed:
            raise _error(
                403,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
                "PERMISSION_DENIED",
            )

    def _calendar(self, request: web.Request) -> dict[str, StoredEvent]:
        stored = self.calendars.get(self._resolve(request.match_info["calendar_id"]))
        if stored is None:
            raise _error(404, "notFound", "Not Found")
        return stored

    def _event(self, request: web.Request) -> StoredEvent:
        event = self._calendar(request).get(request.match_info["event_id"])
        if event is None:
            raise _error(404, "notFound", "Not Found")
        if event.status == "cancelled":
            raise _error(410, "deleted", "Resource has been deleted")
        return event

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _bad_request("Parse Error") from None
        if not isinstance(body, dict):
            raise _bad_request("Parse Error")
        return body

    @staticmethod
    def _window(time_min: datetime, time_max: datetime) -> None:
        if time_max <= time_min:
            raise _error(400, "timeRangeEmpty", "The specified time range is empty.")

    async def _free_busy(self, request: web.Request) -> web.Response:
        self._authorize(request, FREEBUSY_SCOPES)
        body = await self._json(request)
        time_min = _parse_time(body.get("timeMin"), "timeMin")
        time_max = _parse_time(body.get("timeMax"), "timeMax")
        self._window(time_min, time_max)
        calendars: dict[str, Any] = {}
        for item in body.get("items") or []:
            calendar_id = str(item.get("id", ""))
            stored = self.calendars.get(self._resolve(calendar_id))
            if stored is None:
                calendars[calendar_id] = {
                    "errors": [{"domain": "global", "reason": "notFound"}],
                    "busy": [],
                }
                continue
            busy = sorted(
                (e for e in stored.values() if e.busy and e.start < time_max and e.end > time_min),
                key=lambda e: e.start,
            )
            calendars[calendar_id] = {
                "busy": [{"start": rfc3339(e.start), "end": rfc3339(e.end)} for e in busy]
            }
        return web.json_response(
            {
                "kind": "calendar#freeBusy",
                "timeMin": rfc3339(time_min),
                "timeMax": rfc3339(time_max),
                "calendars": calendars,
            }
        )

    async def _list_events(self, request: web.Request) -> web.Response:
        self._authorize(request, READ_EVENTS_SCOPES)
        stored = self._calendar(request)
        query = request.query
        time_min = _parse_time(query["timeMin"], "timeMin") if "timeMin" in query else None
        time_max = _parse_time(query["timeMax"], "timeMax") if "timeMax" in query else None
        show_deleted = query.get("showDeleted") == "true"
        found = sorted(
            (
                e
                for e in stored.values()
                if (show_deleted or e.status != "cancelled")
                and (time_min is None or e.end > time_min)
                and (time_max is None or e.start < time_max)
            ),
            key=lambda e: e.start,
        )
        calendar_id = request.match_info["calendar_id"]
        return web.json_response(
            {
                "kind": "calendar#events",
                "summary": calendar_id,
                "items": [e.resource(calendar_id) for e in found],
            }
        )

    async def _insert_event(self, request: web.Request) -> web.Response:
        self._authorize(request, WRITE_EVENTS_SCOPES)
        stored = self._calendar(request)
        body = await self._json(request)
        start, zone = _event_time(body, "start")
        end, _ = _event_time(body, "end")
        self._window(start, end)
        event = StoredEvent(
            id=uuid.uuid4().hex,
            summary=str(body.get("summary", "")),
            description=str(body.get("description", "")),
            start=start,
            end=end,
            time_zone=zone,
            attendees=[str(a["email"]) for a in body.get("attendees") or [] if "email" in a],
            transparency=str(body.get("transparency", "opaque")),
        )
        stored[event.id] = event
        return web.json_response(event.resource(request.match_info["calendar_id"]))

    async def _get_event(self, request: web.Request) -> web.Response:
        self._authorize(request, READ_EVENTS_SCOPES)
        return web.json_response(self._event(request).resource(request.match_info["calendar_id"]))

    async def _patch_event(self, request: web.Request) -> web.Response:
        self._authorize(request, WRITE_EVENTS_SCOPES)
        event = self._event(request)
        body = await self._json(request)
        start, zone = _event_time(body, "start") if "start" in body else (event.start, None)
        end, _ = _event_time(body, "end") if "end" in body else (event.end, None)
        self._window(start, end)
        event.start, event.end = start, end
        event.time_zone = zone or event.time_zone
        if "summary" in body:
            event.summary = str(body["summary"])
        event.updated = datetime.now(UTC)
        return web.json_response(event.resource(request.match_info["calendar_id"]))

    async def _delete_event(self, request: web.Request) -> web.Response:
        self._authorize(request, WRITE_EVENTS_SCOPES)
        event = self._event(request)
        event.status = "cancelled"
        event.updated = datetime.now(UTC)
        return web.Response(status=204)
