"""STAND-IN for a Zendesk Support API (https://{subdomain}.zendesk.com/api/v2) — not Zendesk.

Speaks the documented subset the CRM tool uses, with Zendesk's paths, bodies, auth and errors:

- `GET /api/v2/users/search.json?query=` — `email:<address>`, `phone:<E.164>` or a bare email
  → `{users: [...], count}`.
- `GET /api/v2/users/{id}/tickets/requested.json` → `{tickets: [...], count}`.
- `POST /api/v2/tickets.json` — `{ticket: {subject, comment: {body}, priority, requester_id}}`
  → 201 `{ticket}`.
- `GET /api/v2/tickets/{id}.json`, `PUT /api/v2/tickets/{id}.json` — `{ticket: {status,
  comment: {body, public}}}` → `{ticket, audit}`.

Auth: API token, `Authorization: Basic base64("{email}/token:{api_token}")`; anything else gets
401 `{"error": "Couldn't authenticate you"}`. Invalid fields get 422 `RecordInvalid`.
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from voiceagents.worker.standins.server import ApiError, StandInServer

PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("new", "open", "pending", "hold", "solved", "closed")


@dataclass
class User:
    id: int
    name: str
    email: str | None = None
    phone: str | None = None

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "role": "end-user",
        }


@dataclass
class Ticket:
    id: int
    subject: str
    description: str
    requester_id: int | None
    priority: str | None = None
    status: str = "new"
    comments: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "description": self.description,
            "priority": self.priority,
            "status": self.status,
            "requester_id": self.requester_id,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "updated_at": self.updated_at.isoformat().replace("+00:00", "Z"),
        }


def _invalid(field_name: str, message: str) -> ApiError:
    return ApiError(
        web.json_response(
            {
                "error": "RecordInvalid",
                "description": "Record validation errors",
                "details": {field_name: [{"description": message}]},
            },
            status=422,
        )
    )


def _not_found() -> ApiError:
    return ApiError(
        web.json_response({"error": "RecordNotFound", "description": "Not found"}, status=404)
    )


class ZendeskStandIn(StandInServer):
    """A local stand-in for a Zendesk account; `base_url` goes where the account URL would."""

    def __init__(
        self, *, email: str, api_token: str, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(host=host, port=port)
        self._credentials = f"{email}/token:{api_token}"
        self.users: dict[int, User] = {}
        self.tickets: dict[int, Ticket] = {}
        self._ids = itertools.count(1001)

    @property
    def base_url(self) -> str:
        return self.origin

    def add_user(self, name: str, *, email: str | None = None, phone: str | None = None) -> User:
        user = User(id=next(self._ids), name=name, email=email, phone=phone)
        self.users[user.id] = user
        return user

    def add_ticket(self, subject: str, requester: User, status: str = "open") -> Ticket:
        ticket = Ticket(
            id=next(self._ids),
            subject=subject,
            description=subject,
            requester_id=requester.id,
            status=status,
        )
        self.tickets[ticket.id] = ticket
        return ticket

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v2/users/search.json", self._search_users),
            web.get("/api/v2/users/{user_id}/tickets/requested.json", self._requested),
            web.post("/api/v2/tickets.json", self._create_ticket),
            web.get("/api/v2/tickets/{ticket_id}.json", self._show_ticket),
            web.put("/api/v2/tickets/{ticket_id}.json", self._update_ticket),
        ]

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        try:
            given = base64.b64decode(header.removeprefix("Basic ")).decode()
        except ValueError:
            given = ""
        if not header.startswith("Basic ") or given != self._credentials:
            raise ApiError(web.json_response({"error": "Couldn't authenticate you"}, status=401))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _invalid("base", "body is not JSON") from None
        ticket = body.get("ticket") if isinstance(body, dict) else None
        if not isinstance(ticket, dict):
            raise _invalid("ticket", "is required")
        return ticket

    def _ticket(self, request: web.Request) -> Ticket:
        try:
            ticket = self.tickets.get(int(request.match_info["ticket_id"]))
        except ValueError:
            ticket = None
        if ticket is None:
            raise _not_found()
        return ticket

    async def _search_users(self, request: web.Request) -> web.Response:
        self._authorize(request)
        query = request.query.get("query", "").strip()
        kind, _, value = query.partition(":") if ":" in query else ("email", "", query)
        value = value.strip().lower()
        if kind == "phone":
            digits = "".join(c for c in value if c.isdigit())
            found = [u for u in self.users.values() if u.phone and _digits(u.phone) == digits]
        elif kind == "email":
            found = [u for u in self.users.values() if (u.email or "").lower() == value]
        else:
            found = []
        return web.json_response(
            {"users": [u.resource() for u in found], "count": len(found), "next_page": None}
        )

    async def _requested(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            user_id = int(request.match_info["user_id"])
        except ValueError:
            raise _not_found() from None
        if user_id not in self.users:
            raise _not_found()
        found = [t for t in self.tickets.values() if t.requester_id == user_id]
        return web.json_response(
            {"tickets": [t.resource() for t in found], "count": len(found), "next_page": None}
        )

    async def _create_ticket(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await self._body(request)
        comment = body.get("comment") or {}
        text = str(comment.get("body", "")).strip() if isinstance(comment, dict) else ""
        if not text:
            raise _invalid("description", "cannot be blank")
        priority = body.get("priority")
        if priority is not None and priority not in PRIORITIES:
            raise _invalid("priority", f"{priority} is not a valid priority")
        requester_id = body.get("requester_id")
        if requester_id is not None and requester_id not in self.users:
            raise _invalid("requester_id", "is invalid")
        ticket = Ticket(
            id=next(self._ids),
            subject=str(body.get("subject") or text[:50]),
            description=text,
            requester_id=requester_id,
            priority=priority,
            comments=[{"body": text, "public": True}],
        )
        self.tickets[ticket.id] = ticket
        return web.json_response({"ticket": ticket.resource()}, status=201)

    async def _show_ticket(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"ticket": self._ticket(request).resource()})

    async def _update_ticket(self, request: web.Request) -> web.Response:
        self._authorize(request)
        ticket = self._ticket(request)
        if ticket.status == "closed":
            raise _invalid("status", "closed prevents ticket update")
        body = await self._body(request)
        status = body.get("status")
        if status is not None and status not in STATUSES:
            raise _invalid("status", f"{status} is not a valid status")
        comment = body.get("comment")
        if isinstance(comment, dict) and str(comment.get("body", "")).strip():
            ticket.comments.append(
                {"body": str(comment["body"]), "public": bool(comment.get("public", True))}
            )
        if status is not None:
            ticket.status = status
        ticket.updated_at = datetime.now(UTC)
        return web.json_response(
            {"ticket": ticket.resource(), "audit": {"ticket_id": ticket.id, "events": []}}
        )


def _digits(phone: str) -> str:
    return "".join(c for c in phone if c.isdigit())
