"""Leads (HubSpot CRM v3 contacts): note a caller as a lead, correct their details, qualify them.

Talks to `https://api.hubapi.com` (the agent tool's `base_url`; tests use
`voiceagents.worker.standins.hubspot`) with the private app token tool-vault released for this
call (secret `api_key`).

A caller is one contact: `create_lead` first searches by phone or email and updates the contact
it finds (notes are appended, never replaced) instead of creating a second one. Phones are
stored in international format, so the same caller is found again on their next call.
`update_lead` and `qualify_lead` change only a lead created or found on this call — the agent
cannot edit an arbitrary contact by id. Notes and the qualification go to contact properties
named in the config (`notes_property`, default HubSpot's `message`; `score_property` and
`reasons_property`, custom properties the account must have).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from livekit.agents import RunContext

from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function
from voiceagents.worker.tools.builtin.crm import caller_number
from voiceagents.worker.tools.ssrf import ALLOWLIST_CONFIG_KEY, Allowlist, guarded_client

HUBSPOT_API = "https://api.hubapi.com"
CONTACTS = "crm/v3/objects/contacts"
NOT_THIS_CALLS_LEAD = "I can only change the details noted on this call."


@dataclass(frozen=True)
class LeadFields:
    """Details of a lead to correct; only the ones given change."""

    name: str | None = None
    phone: str | None = None
    email: str | None = None
    company: str | None = None
    notes: str | None = None


class LeadsRefused(Exception):
    """The CRM refused the request (bad token, unknown property, invalid value)."""


def international(phone: str, caller: str | None) -> str:
    """`phone` as +digits. A number said without its country code that ends the caller's own
    number is the caller's number."""
    digits = "".join(c for c in phone if c.isdigit())
    if phone.strip().startswith("00"):
        digits = digits[2:]
    elif not phone.strip().startswith("+") and caller and caller.endswith(digits):
        return caller
    return "+" + digits


def split_name(name: str) -> dict[str, str]:
    first, _, last = " ".join(name.split()).partition(" ")
    return {"firstname": first, "lastname": last}


class Leads(BaseTool):
    metadata = ToolMetadata(
        name="leads",
        description="Notes callers as sales leads in the CRM, updates and qualifies them.",
        config_schema={
            "type": "object",
            "properties": {
                "base_url": {
                    "type": "string",
                    "description": "The CRM API's URL.",
                    "default": HUBSPOT_API,
                },
                "notes_property": {
                    "type": "string",
                    "description": "Contact property the call notes are appended to.",
                    "default": "message",
                },
                "score_property": {
                    "type": "string",
                    "description": "Custom contact property (number) for the lead score.",
                    "default": "lead_score",
                },
                "reasons_property": {
                    "type": "string",
                    "description": "Custom contact property (text) for why the lead scored so.",
                    "default": "lead_score_reasons",
                },
                "qualified_score": {
                    "type": "integer",
                    "description": "A score at or above this makes the lead sales-qualified.",
                    "default": 70,
                    "minimum": 0,
                    "maximum": 100,
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
        auth_type="api_key",
    )

    def __init__(
        self, *, config: Mapping[str, Any], credentials: ToolCredentials | None = None
    ) -> None:
        super().__init__(config=config, credentials=credentials)
        # Contacts created or found on this call: the only ones the agent may change.
        self.call_leads: set[str] = set()

    @property
    def notes_property(self) -> str:
        return str(self.config.get("notes_property", "message"))

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        token = self.credentials.secrets.get("api_key", "") if self.credentials else ""
        base = str(self.config.get("base_url") or HUBSPOT_API).rstrip("/") + "/"
        async with guarded_client(
            allowlist=Allowlist.from_config(self.config),
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield client

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        if response.status_code in (401, 403):
            raise LeadsRefused("the CRM refused the API token")
        if response.status_code == 400:
            raise LeadsRefused(f"the CRM refused the lead's fields: {response.json()['message']}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def _find(
        self, client: httpx.AsyncClient, phone: str, email: str | None
    ) -> dict[str, Any] | None:
        groups = [{"filters": [{"propertyName": "phone", "operator": "EQ", "value": phone}]}]
        if email:
            groups.append(
                {"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}
            )
        found = self._check(
            await client.post(
                f"{CONTACTS}/search",
                json={
                    "filterGroups": groups,
                    "properties": ["firstname", "lastname", "phone", "email", self.notes_property],
                    "limit": 1,
                },
            )
        )
        results = found.get("results") or []
        return results[0] if results else None

    def _notes(self, previous: str | None, notes: str) -> str:
        line = f"{datetime.now(UTC):%Y-%m-%d} phone call: {notes.strip()}"
        return f"{previous}\n{line}" if previous else line

    @tool_function(redact_arguments=["name", "phone", "email"])
    async def create_lead(
        self,
        context: RunContext[Any],
        name: str,
        phone: str,
        notes: str,
        email: str | None = None,
        company: str | None = None,
    ) -> dict[str, Any]:
        """Note the caller as a sales lead. A caller already in the CRM (same phone or email) is
        updated, never created twice. Use the lead_id it returns for qualify_lead.

        Args:
            name: The caller's full name.
            phone: The caller's phone number, in international format (their caller number
                unless they gave another).
            notes: What they are interested in, budget, timing: the call's key facts.
            email: The caller's email, if they gave one.
            company: The caller's company, if any.
        """
        phone = international(phone, caller_number(context))
        email = email.strip().lower() if email else None
        properties: dict[str, str] = {**split_name(name), "phone": phone}
        if email:
            properties["email"] = email
        if company:
            properties["company"] = company.strip()
        async with self._client() as client:
            existing = await self._find(client, phone, email)
            if existing is not None:
                previous = existing["properties"].get(self.notes_property)
                properties[self.notes_property] = self._notes(previous, notes)
                self._check(
                    await client.patch(
                        f"{CONTACTS}/{existing['id']}", json={"properties": properties}
                    )
                )
                lead_id, created = str(existing["id"]), False
            else:
                properties[self.notes_property] = self._notes(None, notes)
                properties.update(lifecyclestage="lead", hs_lead_status="NEW")
                made = self._check(await client.post(CONTACTS, json={"properties": properties}))
                lead_id, created = str(made["id"]), True
        self.call_leads.add(lead_id)
        return {
            "lead_id": lead_id,
            "created": created,
            "answer": "Thanks, I've noted your details."
            if created
            else "Thanks, I've updated your details.",
        }

    @tool_function(redact_arguments=["fields"])
    async def update_lead(
        self, context: RunContext[Any], lead_id: str, fields: LeadFields
    ) -> dict[str, Any]:
        """Correct details of the lead noted on this call.

        Args:
            lead_id: The lead_id create_lead returned.
            fields: Only the details to change: name, phone, email, company, notes (added to
                the earlier notes).
        """
        if lead_id not in self.call_leads:
            return {"updated": False, "answer": NOT_THIS_CALLS_LEAD}
        properties: dict[str, str] = {}
        if fields.name:
            properties.update(split_name(fields.name))
        if fields.phone:
            properties["phone"] = international(fields.phone, caller_number(context))
        if fields.email:
            properties["email"] = fields.email.strip().lower()
        if fields.company:
            properties["company"] = fields.company.strip()
        async with self._client() as client:
            if fields.notes:
                current = self._check(
                    await client.get(
                        f"{CONTACTS}/{lead_id}", params={"properties": self.notes_property}
                    )
                )
                previous = current["properties"].get(self.notes_property)
                properties[self.notes_property] = self._notes(previous, fields.notes)
            if not properties:
                return {"updated": False, "answer": "What should I change?"}
            self._check(
                await client.patch(f"{CONTACTS}/{lead_id}", json={"properties": properties})
            )
        return {"updated": True, "answer": "Done, I've updated that."}

    @tool_function()
    async def qualify_lead(
        self, context: RunContext[Any], lead_id: str, score: int, reasons: list[str]
    ) -> dict[str, Any]:
        """Record how good a lead the caller is, once you have asked your qualifying questions.

        Args:
            lead_id: The lead_id create_lead returned.
            score: 0 (not a fit) to 100 (ready to buy).
            reasons: Short facts behind the score, e.g. "budget approved", "needs it in Q1".
        """
        if lead_id not in self.call_leads:
            return {"qualified": False, "answer": NOT_THIS_CALLS_LEAD}
        if not 0 <= score <= 100:
            return {"qualified": False, "error": "score must be between 0 and 100"}
        qualified = score >= int(self.config.get("qualified_score", 70))
        properties = {
            str(self.config.get("score_property", "lead_score")): str(score),
            str(self.config.get("reasons_property", "lead_score_reasons")): "; ".join(
                r.strip() for r in reasons if r.strip()
            ),
            "hs_lead_status": "OPEN" if qualified else "UNQUALIFIED",
        }
        if qualified:
            properties["lifecyclestage"] = "salesqualifiedlead"
        async with self._client() as client:
            self._check(
                await client.patch(f"{CONTACTS}/{lead_id}", json={"properties": properties})
            )
        return {"qualified": qualified, "score": score}
