"""STAND-IN for HubSpot's CRM v3 contacts API (https://api.hubapi.com) — not HubSpot.

Speaks the documented subset the leads tool uses, with HubSpot's paths, bodies, auth and errors:

- `POST /crm/v3/objects/contacts/search` — `{filterGroups: [{filters: [{propertyName,
  operator: "EQ", value}]}], properties, limit}`: groups are ORed, filters in a group ANDed;
  `EQ` on `email` ignores case → `{total, results: [contact]}`.
- `POST /crm/v3/objects/contacts` — `{properties}` → 201 contact; an email already on another
  contact → 409 `CONFLICT` ("Contact already exists. Existing ID: <id>").
- `GET /crm/v3/objects/contacts/{id}?properties=a,b` → contact; unknown → 404.
- `PATCH /crm/v3/objects/contacts/{id}` — `{properties}` → contact.

A contact is `{id, properties, createdAt, updatedAt, archived}`; `properties` holds the ones
asked for (`properties=` / search `properties`) plus `hs_object_id`, `createdate`,
`lastmodifieddate`. Writing a property the account does not have answers 400
`VALIDATION_ERROR` (`PROPERTY_DOESNT_EXIST`), as does a value outside an enumeration.

Auth: private app token, `Authorization: Bearer <token>`; anything else gets 401
`INVALID_AUTHENTICATION`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from voiceagents.worker.standins.server import ApiError, StandInServer

# Default contact properties of a HubSpot account that the tool may write.
DEFAULT_PROPERTIES = frozenset(
    {"firstname", "lastname", "email", "phone", "company", "message", "hs_lead_status"}
    | {"lifecyclestage"}
)
ENUMERATIONS = {
    "hs_lead_status": {
        "NEW",
        "OPEN",
        "IN_PROGRESS",
        "OPEN_DEAL",
        "UNQUALIFIED",
        "ATTEMPTED_TO_CONTACT",
        "CONNECTED",
        "BAD_TIMING",
    },
    "lifecyclestage": {
        "subscriber",
        "lead",
        "marketingqualifiedlead",
        "salesqualifiedlead",
        "opportunity",
        "customer",
        "evangelist",
        "other",
    },
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Contact:
    id: str
    properties: dict[str, str]
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def resource(self, names: Iterable[str]) -> dict[str, Any]:
        shown: dict[str, str | None] = {name: self.properties.get(name) for name in names}
        shown.update(
            hs_object_id=self.id, createdate=self.created_at, lastmodifieddate=self.updated_at
        )
        return {
            "id": self.id,
            "properties": shown,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
        }


def _error(status: int, category: str, message: str, **extra: Any) -> ApiError:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }
    return ApiError(web.json_response(body, status=status))


class HubSpotStandIn(StandInServer):
    """A local stand-in for a HubSpot account's contacts; `base_url` replaces
    `https://api.hubapi.com`. `custom_properties` are the account's own contact properties."""

    def __init__(
        self,
        *,
        access_token: str,
        custom_properties: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self._token = access_token
        self.known_properties = DEFAULT_PROPERTIES | set(custom_properties)
        self.contacts: dict[str, Contact] = {}
        self._ids = itertools.count(51)

    @property
    def base_url(self) -> str:
        return self.origin

    def add_contact(self, **properties: str) -> Contact:
        contact = Contact(id=str(next(self._ids)), properties=dict(properties))
        self.contacts[contact.id] = contact
        return contact

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/crm/v3/objects/contacts/search", self._search),
            web.post("/crm/v3/objects/contacts", self._create),
            web.get("/crm/v3/objects/contacts/{contact_id}", self._read),
            web.patch("/crm/v3/objects/contacts/{contact_id}", self._update),
        ]

    def _authorize(self, request: web.Request) -> None:
        if request.headers.get("Authorization", "") != f"Bearer {self._token}":
            raise _error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            )

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _error(400, "VALIDATION_ERROR", "Invalid input JSON") from None
        if not isinstance(body, dict):
            raise _error(400, "VALIDATION_ERROR", "Invalid input JSON")
        return body

    def _properties(self, body: dict[str, Any]) -> dict[str, str]:
        given = body.get("properties")
        if not isinstance(given, dict):
            raise _error(400, "VALIDATION_ERROR", "Invalid input JSON: properties is required")
        errors = []
        for name, value in given.items():
            if name not in self.known_properties:
                errors.append(
                    {
                        "isValid": False,
                        "message": f'Property "{name}" does not exist',
                        "error": "PROPERTY_DOESNT_EXIST",
                        "name": name,
                    }
                )
            elif name in ENUMERATIONS and value not in ENUMERATIONS[name]:
                errors.append(
                    {
                        "isValid": False,
                        "message": f"{value} was not one of the allowed options",
                        "error": "INVALID_OPTION",
                        "name": name,
                    }
                )
        if errors:
            raise _error(
                400,
                "VALIDATION_ERROR",
                f"Property values were not valid: {errors}",
            )
        return {name: "" if value is None else str(value) for name, value in given.items()}

    def _contact(self, request: web.Request) -> Contact:
        contact = self.contacts.get(request.match_info["contact_id"])
        if contact is None:
            raise _error(404, "OBJECT_NOT_FOUND", "resource not found")
        return contact

    def _email_owner(self, email: str) -> Contact | None:
        wanted = email.strip().lower()
        for contact in self.contacts.values():
            if wanted and contact.properties.get("email", "").lower() == wanted:
                return contact
        return None

    async def _search(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await self._json(request)
        groups = body.get("filterGroups") or []

        def matches(contact: Contact, filters: list[dict[str, Any]]) -> bool:
            for rule in filters:
                if rule.get("operator") != "EQ":
                    raise _error(400, "VALIDATION_ERROR", "only EQ is supported here")
                name = str(rule.get("propertyName"))
                have = contact.properties.get(name, "")
                want = str(rule.get("value", ""))
                if name == "email":
                    have, want = have.lower(), want.lower()
                if have != want:
                    return False
            return True

        found = [
            c
            for c in self.contacts.values()
            if any(matches(c, group.get("filters") or []) for group in groups)
        ]
        names = body.get("properties") or ["firstname", "lastname", "email"]
        limit = int(body.get("limit") or 10)
        return web.json_response(
            {"total": len(found), "results": [c.resource(names) for c in found[:limit]]}
        )

    async def _create(self, request: web.Request) -> web.Response:
        self._authorize(request)
        properties = self._properties(await self._json(request))
        existing = self._email_owner(properties.get("email", ""))
        if existing is not None:
            raise _error(409, "CONFLICT", f"Contact already exists. Existing ID: {existing.id}")
        contact = self.add_contact(**properties)
        return web.json_response(contact.resource(properties), status=201)

    async def _read(self, request: web.Request) -> web.Response:
        self._authorize(request)
        contact = self._contact(request)
        names = [n for n in request.query.get("properties", "").split(",") if n]
        return web.json_response(contact.resource(names or ["firstname", "lastname", "email"]))

    async def _update(self, request: web.Request) -> web.Response:
        self._authorize(request)
        contact = self._contact(request)
        properties = self._properties(await self._json(request))
        owner = self._email_owner(properties.get("email", ""))
        if owner is not None and owner is not contact:
            raise _error(409, "CONFLICT", f"Contact already exists. Existing ID: {owner.id}")
        contact.properties.update(properties)
        contact.updated_at = _now()
        return web.json_response(contact.resource(properties))
