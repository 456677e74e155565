"""CRM (Zendesk Support API): who is calling, their open tickets, and opening or updating tickets.

Talks to the account's API (`https://{subdomain}.zendesk.com/api/v2`, the agent tool's
`base_url`; tests use `voiceagents.worker.standins.zendesk`) with the API token tool-vault
released for this call (secret `api_key`) and the API user's `email` from the config.

The caller's own number (from the call) is the default customer. A ticket is only updated when
it was requested by that customer: the agent never changes someone else's ticket.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
from livekit.agents import RunContext

from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function
from voiceagents.worker.tools.ssrf import ALLOWLIST_CONFIG_KEY, Allowlist, guarded_client

Priority = Literal["low", "normal", "high", "urgent"]
Status = Literal["open", "pending", "solved"]


class CrmRefused(Exception):
    """The CRM refused the request (bad credentials, invalid fields)."""


def caller_number(context: RunContext[Any]) -> str | None:
    """The caller's phone number, from the call's context."""
    try:
        state = context.userdata
    except ValueError:  # a session without userdata
        return None
    number = getattr(getattr(state, "call", None), "from_number", None)
    return number if isinstance(number, str) and number else None


def _digits(phone: str) -> str:
    return "".join(c for c in phone if c.isdigit())


class Crm(BaseTool):
    metadata = ToolMetadata(
        name="crm",
        description="Finds the caller in the help desk and opens or updates support tickets.",
        config_schema={
            "type": "object",
            "properties": {
                "base_url": {
                    "type": "string",
                    "description": "The help desk's URL, e.g. https://acme.zendesk.com",
                },
                "email": {
                    "type": "string",
                    "description": "Email of the help desk user the API token belongs to.",
                },
                ALLOWLIST_CONFIG_KEY: {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Internal hosts or networks the tool may call.",
                    "default": [],
                },
            },
            "required": ["base_url", "email"],
            "additionalProperties": False,
        },
        auth_type="api_key",
    )

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        token = self.credentials.secrets.get("api_key", "") if self.credentials else ""
        login = f"{self.config.get('email', '')}/token:{token}"
        headers = {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}
        base = str(self.config.get("base_url", "")).rstrip("/") + "/api/v2/"
        async with guarded_client(
            allowlist=Allowlist.from_config(self.config), base_url=base, headers=headers
        ) as client:
            yield client

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        if response.status_code in (401, 403):
            raise CrmRefused("the help desk refused the API token")
        if response.status_code == 422:
            raise CrmRefused("the help desk refused the ticket fields")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def _find(
        self, client: httpx.AsyncClient, phone: str | None, email: str | None
    ) -> dict[str, Any] | None:
        query = f"email:{email.strip()}" if email else f"phone:+{_digits(phone or '')}"
        users = self._check(await client.get("users/search.json", params={"query": query}))
        found = users.get("users") or []
        return found[0] if found else None

    async def _caller(self, client: httpx.AsyncClient, context: RunContext[Any]) -> Any:
        number = caller_number(context)
        return None if number is None else await self._find(client, number, None)

    @tool_function(idempotent=True, redact_arguments=["phone", "email"])
    async def get_customer(
        self, context: RunContext[Any], phone: str | None = None, email: str | None = None
    ) -> dict[str, Any]:
        """Look up a customer and their open tickets. Without arguments, looks up the caller by
        the number they are calling from.

        Args:
            phone: Another phone number to look up, in international format.
            email: An email address to look up instead of a phone number.
        """
        phone = phone or (None if email else caller_number(context))
        if not phone and not email:
            return {"found": False, "answer": "I need a phone number or an email to look up."}
        async with self._client() as client:
            user = await self._find(client, phone, email)
            if user is None:
                return {"found": False, "answer": "I couldn't find a customer record."}
            requested = self._check(
                await client.get(f"users/{int(user['id'])}/tickets/requested.json")
            )
        open_tickets = [
            {"ticket_id": t["id"], "subject": t.get("subject", ""), "status": t.get("status")}
            for t in requested.get("tickets", [])
            if t.get("status") not in ("solved", "closed")
        ]
        return {
            "found": True,
            "customer": {"name": user.get("name", ""), "customer_id": user["id"]},
            "open_tickets": open_tickets,
        }

    @tool_function()
    async def create_ticket(
        self,
        context: RunContext[Any],
        subject: str,
        description: str,
        priority: Priority | None = None,
    ) -> dict[str, Any]:
        """Open a support ticket for the caller.

        Args:
            subject: A short title, e.g. "Router keeps disconnecting".
            description: What the caller reported, in their words, with any details they gave.
            priority: How urgent it is; leave out when the caller did not say.
        """
        number = caller_number(context)
        async with self._client() as client:
            customer = await self._caller(client, context)
            ticket: dict[str, Any] = {
                "subject": subject,
                "comment": {
                    "body": description
                    + (f"\n\n(Reported by phone from {number}.)" if number else "")
                },
            }
            if priority is not None:
                ticket["priority"] = priority
            if customer is not None:
                ticket["requester_id"] = customer["id"]
            created = self._check(await client.post("tickets.json", json={"ticket": ticket}))
        ticket_id = created["ticket"]["id"]
        return {
            "created": True,
            "ticket_id": ticket_id,
            "answer": f"I've opened ticket number {ticket_id} for you.",
        }

    @tool_function()
    async def update_ticket(
        self,
        context: RunContext[Any],
        ticket_id: int,
        status: Status | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Add a comment to one of the caller's tickets or change its status.

        Args:
            ticket_id: The ticket number.
            status: "solved" when the caller says the problem is gone, "open" to reopen it.
            comment: What the caller wants to add to the ticket.
        """
        if status is None and not comment:
            return {"updated": False, "answer": "What should I change on the ticket?"}
        async with self._client() as client:
            customer = await self._caller(client, context)
            response = await client.get(f"tickets/{int(ticket_id)}.json")
            current = None if response.status_code == 404 else self._check(response)["ticket"]
            # Unknown and someone else's tickets get the same answer: nothing is revealed.
            if current is None or customer is None or current.get("requester_id") != customer["id"]:
                return {"updated": False, "answer": "I can't find that ticket under your number."}
            change: dict[str, Any] = {}
            if status is not None:
                change["status"] = status
            if comment:
                change["comment"] = {"body": comment, "public": True}
            self._check(await client.put(f"tickets/{int(ticket_id)}.json", json={"ticket": change}))
        done = f"marked {status}" if status else "updated"
        return {"updated": True, "answer": f"Ticket {ticket_id} is {done}."}
