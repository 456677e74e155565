"""Google Calendar: free time, booking, rescheduling and cancelling appointments on a phone call.

Talks to the Calendar API v3 (`https://www.googleapis.com/calendar/v3`; tests point
`api_base_url` at `voiceagents.worker.standins.google_calendar`) with the OAuth access token
tool-vault released for this call. Times the model passes — ISO 8601 or what the caller said
("tomorrow at 2pm") — are read in the agent tool's time zone and sent and compared in UTC;
answers come back in the caller's terms ("free between 2 and 4 pm").

An access token that expires during the call is renewed through tool-vault (which refreshes it)
and the request is repeated, so the caller notices nothing; when tool-vault cannot renew it
(the connection was revoked), the agent says the calendar is unavailable.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from dateparser.date import DateDataParser
from livekit.agents import RunContext

from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function
from voiceagents.worker.tools.ssrf import ALLOWLIST_CONFIG_KEY, Allowlist, guarded_client

T = TypeVar("T")

GOOGLE_CALENDAR_API = "https://www.googleapis.com/calendar/v3"
FREEBUSY_SCOPE = "https://www.googleapis.com/auth/calendar.freebusy"
EVENTS_SCOPE = "https://www.googleapis.com/auth/calendar.events"
# Renew a token this close to its expiry before using it, rather than after a 401.
RENEW_BEFORE = timedelta(seconds=30)

UNAVAILABLE_SENTENCE = (
    "I'm sorry, I can't reach the calendar right now, so I can't check or book appointments "
    "on this call. Is there anything else I can help you with?"
)

# -- Times ------------------------------------------------------------------------------------


class TimeNotUnderstood(ValueError):
    """The model passed a time that names no moment; the message says what to ask for."""


@dataclass(frozen=True)
class ResolvedTime:
    moment: datetime  # aware, UTC
    # False when only a day was given ("tomorrow"): `moment` is that day's local midnight.
    has_time: bool


# "at 10" is a clock time, not the 10th of a month (dateparser's reading).
_BARE_HOUR = re.compile(r"\bat (\d{1,2})\b(?!\s*(?::|\.\d|am|pm|a\.m|p\.m|h\b|o'clock))", re.I)


def resolve_time(text: str, zone: ZoneInfo, now: datetime, language: str = "en") -> ResolvedTime:
    """`text` (ISO 8601 or a phrase) as a UTC moment; phrases are read in `zone` from `now`."""
    text = text.strip()
    if not text:
        raise TimeNotUnderstood("no time was given; ask the caller for a day and a time")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        has_time = "T" in text or " " in text
        local = parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)
        return ResolvedTime(moment=local.astimezone(UTC), has_time=has_time)

    # Built per call (about a millisecond): "tomorrow" depends on the local date now.
    parser = DateDataParser(
        languages=[language],
        settings={
            "PREFER_DATES_FROM": "future",
            "RETURN_TIME_AS_PERIOD": True,
            # dateparser takes a phrase whose time equals the base's for a day alone
            # ("tomorrow at 10" at 10:00): a base no spoken time can equal avoids that.
            "RELATIVE_BASE": now.astimezone(zone).replace(tzinfo=None, second=59, microsecond=1),
        },
    )
    data = parser.get_date_data(_BARE_HOUR.sub(r"at \1:00", text))
    found = data.date_obj
    if found is None or data.period not in ("time", "day"):
        raise TimeNotUnderstood(
            f"could not tell which day and time {text!r} means; ask the caller for a day and a "
            "time, or pass ISO 8601 like 2026-11-25T14:00"
        )
    if data.period == "day":
        found = datetime.combine(found.date(), time())
    else:
        found = found.replace(second=0, microsecond=0)
    local = found if found.tzinfo else found.replace(tzinfo=zone)
    moment = local.astimezone(UTC)
    if moment > now + timedelta(days=2 * 366):
        raise TimeNotUnderstood(f"{text!r} is more than two years away; ask the caller again")
    return ResolvedTime(moment=moment, has_time=data.period == "time")


def load_dateparser() -> None:
    """Make dateparser load what it otherwise loads on the first phrase it reads: its English
    data module and its compiled regexes (hundreds of ms of CPU that would block a call's event
    loop). Run at import, so the worker does it once in the forkserver its job processes share."""
    resolve_time("tomorrow at 2pm", ZoneInfo("UTC"), datetime(2026, 1, 1, tzinfo=UTC))


load_dateparser()


def speak_clock(moment: datetime) -> str:
    """'2 pm', '2:30 pm', 'noon', 'midnight' (`moment` already local)."""
    if moment.minute == 0 and moment.hour in (0, 12):
        return "midnight" if moment.hour == 0 else "noon"
    hour = moment.hour % 12 or 12
    minutes = f":{moment.minute:02d}" if moment.minute else ""
    return f"{hour}{minutes} {'am' if moment.hour < 12 else 'pm'}"


def speak_day(day: date, today: date) -> str:
    if day == today:
        return "today"
    if day == today + timedelta(days=1):
        return "tomorrow"
    return f"{day:%A}, {day.day} {day:%B}"


def speak_range(start: datetime, end: datetime, zone: ZoneInfo, now: datetime) -> str:
    """'between 2 and 4 pm tomorrow' / 'between 11 am and 1 pm on Friday, 27 November'."""
    start, end = start.astimezone(zone), end.astimezone(zone)
    today = now.astimezone(zone).date()
    first = speak_clock(start)
    last = speak_clock(end)
    if first.endswith(last[-2:]) and first[-2:] in ("am", "pm"):
        first = first[:-3]  # "2 to 4 pm", not "2 pm to 4 pm"
    day = speak_day(start.date(), today)
    on = "" if day in ("today", "tomorrow") else "on "
    return f"between {first} and {last} {on}{day}"


def speak_moment(moment: datetime, zone: ZoneInfo, now: datetime) -> str:
    local = moment.astimezone(zone)
    day = speak_day(local.date(), now.astimezone(zone).date())
    on = "" if day in ("today", "tomorrow") else "on "
    return f"{speak_clock(local)} {on}{day}"


def free_slots(
    busy: list[tuple[datetime, datetime]], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The gaps between `busy` intervals inside [start, end)."""
    slots: list[tuple[datetime, datetime]] = []
    cursor = start
    for busy_start, busy_end in sorted(busy):
        if busy_start > cursor:
            slots.append((cursor, min(busy_start, end)))
        cursor = max(cursor, busy_end)
        if cursor >= end:
            break
    if cursor < end:
        slots.append((cursor, end))
    return [(a, b) for a, b in slots if b > a]


# -- The API ----------------------------------------------------------------------------------


class CalendarAuthError(Exception):
    """The access token was refused (expired or revoked)."""


class CalendarNotFound(Exception):
    def __init__(self, gone: bool) -> None:
        super().__init__("deleted" if gone else "not found")
        self.gone = gone


class CalendarUnavailable(Exception):
    """No usable token: tool-vault could not renew it."""


class CalendarApi:
    """The Calendar v3 requests the tool makes, on one HTTP client and token."""

    def __init__(self, client: httpx.AsyncClient, calendar_id: str, token: str) -> None:
        self._client = client
        self._events = f"calendars/{quote(calendar_id, safe='@')}/events"
        self._calendar_id = calendar_id
        self._headers = {"Authorization": f"Bearer {token}"}

    async def _send(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        response = await self._client.request(
            method, path, json=json, params=params, headers=self._headers
        )
        if response.status_code == 401:
            raise CalendarAuthError
        if response.status_code in (404, 410):
            raise CalendarNotFound(gone=response.status_code == 410)
        response.raise_for_status()
        return response.json() if response.content else None

    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        body = await self._send(
            "POST",
            "freeBusy",
            json={
                "timeMin": _rfc3339(start),
                "timeMax": _rfc3339(end),
                "items": [{"id": self._calendar_id}],
            },
        )
        calendar = body.get("calendars", {}).get(self._calendar_id, {})
        if calendar.get("errors"):
            raise CalendarNotFound(gone=False)
        return [(_utc(b["start"]), _utc(b["end"])) for b in calendar.get("busy", [])]

    async def events(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        body = await self._send(
            "GET",
            self._events,
            params={
                "timeMin": _rfc3339(start),
                "timeMax": _rfc3339(end),
                "singleEvents": "true",
                "orderBy": "startTime",
            },
        )
        return list(body.get("items", []))

    async def insert(self, event: dict[str, Any], *, notify: bool) -> dict[str, Any]:
        params = {"sendUpdates": "all" if notify else "none"}
        result: dict[str, Any] = await self._send("POST", self._events, json=event, params=params)
        return result

    async def get(self, event_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send("GET", f"{self._events}/{_segment(event_id)}")
        return result

    async def patch(self, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(
            "PATCH", f"{self._events}/{_segment(event_id)}", json=changes
        )
        return result

    async def delete(self, event_id: str) -> None:
        await self._send("DELETE", f"{self._events}/{_segment(event_id)}")


def _segment(event_id: str) -> str:
    """The event id as one path segment: the model's argument cannot add path or query."""
    if not _EVENT_ID.fullmatch(event_id):
        raise CalendarNotFound(gone=False)
    return event_id


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utc(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _event_span(event: dict[str, Any]) -> tuple[datetime, datetime] | None:
    start, end = event.get("start", {}), event.get("end", {})
    if "dateTime" in start and "dateTime" in end:
        return _utc(start["dateTime"]), _utc(end["dateTime"])
    if "date" in start and "date" in end:  # all-day event
        return (
            datetime.fromisoformat(start["date"]).replace(tzinfo=UTC),
            datetime.fromisoformat(end["date"]).replace(tzinfo=UTC),
        )
    return None


def _blocks(event: dict[str, Any]) -> bool:
    return event.get("status") != "cancelled" and event.get("transparency") != "transparent"


_EVENT_ID = re.compile(r"[A-Za-z0-9_-]{1,1024}")


# -- Renewing the token through tool-vault ----------------------------------------------------


class CredentialRenewer(Protocol):
    """What the call state offers tools whose token expired mid-call: ask tool-vault again
    (it refreshes the token); None when it cannot (revoked, refresh failed, unreachable)."""

    async def renew_credentials(self, agent_tool_id: str) -> ToolCredentials | None: ...


def _call_state(context: RunContext[Any]) -> Any:
    try:
        return context.userdata
    except ValueError:  # a session without userdata
        return None


# -- The tool ---------------------------------------------------------------------------------


class GoogleCalendar(BaseTool):
    metadata = ToolMetadata(
        name="google_calendar",
        description=(
            "Checks free time in a Google Calendar and books, moves and cancels appointments."
        ),
        config_schema={
            "type": "object",
            "properties": {
                "calendar_id": {
                    "type": "string",
                    "description": "Calendar to use: 'primary' or a calendar's id (an email).",
                    "default": "primary",
                },
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone callers speak in, e.g. America/New_York.",
                    "default": "UTC",
                },
                "default_duration_minutes": {
                    "type": "integer",
                    "description": "Length of an appointment when the caller does not say.",
                    "minimum": 5,
                    "maximum": 480,
                    "default": 30,
                },
                "day_starts_at": {
                    "type": "string",
                    "description": "Start of bookable hours (HH:MM), used to describe free time.",
                    "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
                    "default": "09:00",
                },
                "day_ends_at": {
                    "type": "string",
                    "description": "End of bookable hours (HH:MM).",
                    "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
                    "default": "17:00",
                },
                "api_base_url": {
                    "type": "string",
                    "description": "Calendar API base URL (only changed for tests).",
                    "default": GOOGLE_CALENDAR_API,
                },
                ALLOWLIST_CONFIG_KEY: {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Internal hosts or networks the tool may call.",
                    "default": [],
                },
            },
            "additionalProperties": False,
        },
        auth_type="oauth2",
        oauth_provider="google",
    )

    # -- config

    @property
    def zone(self) -> ZoneInfo:
        name = str(self.config.get("timezone") or "UTC")
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo("UTC")

    @property
    def calendar_id(self) -> str:
        return str(self.config.get("calendar_id") or "primary")

    @property
    def default_duration(self) -> timedelta:
        return timedelta(minutes=int(self.config.get("default_duration_minutes") or 30))

    def _hours(self, day: date) -> tuple[datetime, datetime]:
        """Bookable hours of a local day, as UTC moments."""
        opens = time.fromisoformat(str(self.config.get("day_starts_at") or "09:00"))
        closes = time.fromisoformat(str(self.config.get("day_ends_at") or "17:00"))
        return (
            datetime.combine(day, opens, tzinfo=self.zone).astimezone(UTC),
            datetime.combine(day, closes, tzinfo=self.zone).astimezone(UTC),
        )

    def _resolve(self, context: RunContext[Any], text: str, now: datetime) -> ResolvedTime:
        config = getattr(_call_state(context), "config", None)
        language = str(getattr(config, "language", "en") or "en").split("-")[0]
        return resolve_time(text, self.zone, now, language)

    # -- HTTP with renewal

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        base = str(self.config.get("api_base_url") or GOOGLE_CALENDAR_API).rstrip("/") + "/"
        async with guarded_client(
            allowlist=Allowlist.from_config(self.config), base_url=base
        ) as client:
            yield client

    async def _renew(self, context: RunContext[Any]) -> str:
        renewer = getattr(_call_state(context), "renew_credentials", None)
        if self.credentials is None or renewer is None:
            raise CalendarUnavailable
        fresh: ToolCredentials | None = await renewer(self.credentials.agent_tool_id)
        if fresh is None or not fresh.access_token:
            raise CalendarUnavailable
        self.credentials = fresh
        return fresh.access_token

    async def _with_api(
        self, context: RunContext[Any], operation: Callable[[CalendarApi], Awaitable[T]]
    ) -> T:
        """Run `operation`; on an expired token, renew it through tool-vault and run it again."""
        credentials = self.credentials
        if credentials is None or not credentials.access_token:
            raise CalendarUnavailable
        token = credentials.access_token
        if credentials.expires_at is not None and credentials.expires_at - RENEW_BEFORE <= (
            datetime.now(UTC)
        ):
            token = await self._renew(context)
        async with self._client() as client:
            try:
                return await operation(CalendarApi(client, self.calendar_id, token))
            except CalendarAuthError:
                token = await self._renew(context)
            try:
                return await operation(CalendarApi(client, self.calendar_id, token))
            except CalendarAuthError:
                raise CalendarUnavailable from None

    async def _answer(
        self,
        context: RunContext[Any],
        work: Callable[[CalendarApi, datetime], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        try:
            return await self._with_api(context, lambda api: work(api, now))
        except TimeNotUnderstood as exc:
            return {"error": "bad_time", "detail": str(exc)}
        except CalendarUnavailable:
            return {"error": "unavailable", "say_to_caller": UNAVAILABLE_SENTENCE}

    async def _conflicts(
        self, api: CalendarApi, start: datetime, end: datetime, ignore: str | None = None
    ) -> list[tuple[datetime, datetime]]:
        return [
            span
            for event in await api.events(start, end)
            if event.get("id") != ignore
            and _blocks(event)
            and (span := _event_span(event)) is not None
            and span[0] < end
            and span[1] > start
        ]

    async def _free_that_day(
        self, api: CalendarApi, day: date, length: timedelta, now: datetime, ignore: str | None
    ) -> list[tuple[datetime, datetime]]:
        opens, closes = self._hours(day)
        opens = max(opens, now)
        if closes <= opens:
            return []
        busy = await self._conflicts(api, opens, closes, ignore)
        return [(a, b) for a, b in free_slots(busy, opens, closes) if b - a >= length]

    def _describe_free(self, slots: list[tuple[datetime, datetime]], now: datetime) -> str:
        if not slots:
            return "There is no free time left that day."
        spoken = [speak_range(a, b, self.zone, now) for a, b in slots[:3]]
        return (
            "Free "
            + ", ".join(spoken[:-1])
            + (" and " if len(spoken) > 1 else "")
            + (spoken[-1] + ".")
        )

    @staticmethod
    def _slots_json(slots: list[tuple[datetime, datetime]], zone: ZoneInfo) -> list[dict[str, str]]:
        return [
            {"start": a.astimezone(zone).isoformat(), "end": b.astimezone(zone).isoformat()}
            for a, b in slots
        ]

    # -- functions

    @tool_function(oauth_scopes=[FREEBUSY_SCOPE], idempotent=True)
    async def check_availability(
        self, context: RunContext[Any], start_time: str, end_time: str | None = None
    ) -> dict[str, Any]:
        """Check whether the calendar is free at a time or on a day, before offering or booking it.

        Args:
            start_time: When, as ISO 8601 (2026-11-25T14:00) or as the caller said it
                ("tomorrow at 2pm"). A day alone ("Friday") checks that whole day.
            end_time: End of the time to check; when omitted, one appointment's length.
        """

        async def work(api: CalendarApi, now: datetime) -> dict[str, Any]:
            start = self._resolve(context, start_time, now)
            local_day = start.moment.astimezone(self.zone).date()
            if start.has_time:
                window_start = start.moment
                window_end = (
                    self._resolve(context, end_time, now).moment
                    if end_time
                    else start.moment + self.default_duration
                )
                if window_end <= window_start:
                    raise TimeNotUnderstood("end_time must be after start_time")
            else:
                window_start, window_end = self._hours(local_day)
            day_open, day_close = self._hours(local_day)
            query_start, query_end = min(window_start, day_open), max(window_end, day_close)
            busy = await api.busy(query_start, query_end)
            clashes = [(a, b) for a, b in busy if a < window_end and b > window_start]
            day_free = [
                (a, b)
                for a, b in free_slots(busy, max(day_open, now), day_close)
                if b - a >= self.default_duration
            ]
            if not start.has_time:
                return {
                    "available": bool(day_free),
                    "answer": self._describe_free(day_free, now),
                    "free": self._slots_json(day_free, self.zone),
                }
            if window_start < now:
                return {
                    "available": False,
                    "answer": "That time has already passed. " + self._describe_free(day_free, now),
                    "free": self._slots_json(day_free, self.zone),
                }
            if not clashes:
                slot = speak_range(window_start, window_end, self.zone, now)
                return {
                    "available": True,
                    "answer": f"Yes, the calendar is free {slot}.",
                    "free": self._slots_json([(window_start, window_end)], self.zone),
                }
            return {
                "available": False,
                "answer": f"{speak_moment(window_start, self.zone, now).capitalize()} is taken. "
                + self._describe_free(day_free, now),
                "free": self._slots_json(day_free, self.zone),
            }

        return await self._answer(context, work)

    @tool_function(oauth_scopes=[EVENTS_SCOPE], redact_arguments=["attendee_email"])
    async def create_event(
        self,
        context: RunContext[Any],
        summary: str,
        start_time: str,
        duration_minutes: int | None = None,
        attendee_email: str | None = None,
    ) -> dict[str, Any]:
        """Book an appointment. Refuses a time that is already taken.

        Args:
            summary: Title of the appointment, e.g. "Haircut for Sam Lee".
            start_time: When, as ISO 8601 (2026-11-25T14:00) or as the caller said it
                ("tomorrow at 2pm"); must include a time of day.
            duration_minutes: Length in minutes; when omitted, the usual appointment length.
            attendee_email: The caller's email, to send them an invitation.
        """

        async def work(api: CalendarApi, now: datetime) -> dict[str, Any]:
            start = self._resolve(context, start_time, now)
            if not start.has_time:
                raise TimeNotUnderstood("start_time has no time of day; ask the caller for one")
            length = (
                timedelta(minutes=duration_minutes) if duration_minutes else self.default_duration
            )
            if length <= timedelta(0) or length > timedelta(hours=12):
                raise TimeNotUnderstood("duration_minutes must be between 1 and 720")
            begin, end = start.moment, start.moment + length
            day = begin.astimezone(self.zone).date()
            if begin < now:
                free = await self._free_that_day(api, day, length, now, None)
                return {
                    "booked": False,
                    "answer": "That time has already passed. " + self._describe_free(free, now),
                }
            if await self._conflicts(api, begin, end):
                free = await self._free_that_day(api, day, length, now, None)
                return {
                    "booked": False,
                    "answer": f"Sorry, {speak_moment(begin, self.zone, now)} is already taken. "
                    + self._describe_free(free, now),
                    "free": self._slots_json(free, self.zone),
                }
            event: dict[str, Any] = {
                "summary": summary,
                "start": {"dateTime": _rfc3339(begin), "timeZone": self.zone.key},
                "end": {"dateTime": _rfc3339(end), "timeZone": self.zone.key},
            }
            if attendee_email:
                event["attendees"] = [{"email": attendee_email}]
            created = await api.insert(event, notify=bool(attendee_email))
            if await self._lost_race(api, created, begin, end):
                await api.delete(created["id"])
                return {
                    "booked": False,
                    "answer": f"Sorry, {speak_moment(begin, self.zone, now)} was just taken.",
                }
            minutes = int(length.total_seconds() // 60)
            return {
                "booked": True,
                "event_id": created["id"],
                "answer": f"Booked {summary} at {speak_moment(begin, self.zone, now)} "
                f"for {minutes} minutes.",
            }

        return await self._answer(context, work)

    async def _lost_race(
        self, api: CalendarApi, created: dict[str, Any], start: datetime, end: datetime
    ) -> bool:
        """Two callers booking one slot at once both pass the check; after inserting, the
        booking that was created second (by creation time, then id) gives way."""
        mine = (created.get("created", ""), created.get("id", ""))
        for event in await api.events(start, end):
            span = _event_span(event)
            if (
                event.get("id") != created.get("id")
                and _blocks(event)
                and span is not None
                and span[0] < end
                and span[1] > start
                and (event.get("created", ""), event.get("id", "")) < mine
            ):
                return True
        return False

    @tool_function(oauth_scopes=[EVENTS_SCOPE])
    async def update_event(
        self, context: RunContext[Any], event_id: str, new_start_time: str
    ) -> dict[str, Any]:
        """Move a booked appointment to a new time, keeping its length. Refuses a taken time.

        Args:
            event_id: The appointment's id, as create_event returned it.
            new_start_time: The new time, as ISO 8601 or as the caller said it.
        """

        async def work(api: CalendarApi, now: datetime) -> dict[str, Any]:
            start = self._resolve(context, new_start_time, now)
            if not start.has_time:
                raise TimeNotUnderstood("new_start_time has no time of day; ask the caller")
            try:
                event = await api.get(event_id)
            except CalendarNotFound:
                return {"moved": False, "answer": "I can't find that appointment."}
            span = _event_span(event)
            length = span[1] - span[0] if span else self.default_duration
            begin, end = start.moment, start.moment + length
            if begin < now:
                return {"moved": False, "answer": "That time has already passed."}
            if await self._conflicts(api, begin, end, ignore=event_id):
                free = await self._free_that_day(
                    api, begin.astimezone(self.zone).date(), length, now, event_id
                )
                return {
                    "moved": False,
                    "answer": f"Sorry, {speak_moment(begin, self.zone, now)} is already taken. "
                    + self._describe_free(free, now),
                }
            await api.patch(
                event_id,
                {
                    "start": {"dateTime": _rfc3339(begin), "timeZone": self.zone.key},
                    "end": {"dateTime": _rfc3339(end), "timeZone": self.zone.key},
                },
            )
            return {
                "moved": True,
                "answer": f"Moved to {speak_moment(begin, self.zone, now)}.",
            }

        return await self._answer(context, work)

    @tool_function(oauth_scopes=[EVENTS_SCOPE])
    async def delete_event(self, context: RunContext[Any], event_id: str) -> dict[str, Any]:
        """Cancel a booked appointment.

        Args:
            event_id: The appointment's id, as create_event returned it.
        """

        async def work(api: CalendarApi, now: datetime) -> dict[str, Any]:
            try:
                await api.delete(event_id)
            except CalendarNotFound as exc:
                if exc.gone:
                    return {"cancelled": True, "answer": "That appointment was already cancelled."}
                return {"cancelled": False, "answer": "I can't find that appointment."}
            return {"cancelled": True, "answer": "The appointment is cancelled."}

        return await self._answer(context, work)
