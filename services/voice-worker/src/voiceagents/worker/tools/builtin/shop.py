"""E-commerce (Shopify-style Admin API): where an order is, and starting a return.

Talks to the store (`https://{shop}.myshopify.com/admin/api/{version}`, the agent tool's
`shop_url`; tests use `voiceagents.worker.standins.shopify`) with the access token tool-vault
released for this call (secret `api_key`).

Nothing about an order is said before it is shown to belong to the caller: the number they call
from, or the email or phone number they give, must be the order's. An unknown order and someone
else's order get the same answer. A return can only be started for an order verified on this
call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
from livekit.agents import RunContext

from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function
from voiceagents.worker.tools.builtin.crm import caller_number
from voiceagents.worker.tools.ssrf import ALLOWLIST_CONFIG_KEY, Allowlist, guarded_client

ReturnReason = Literal[
    "defective", "wrong_item", "not_as_described", "too_small", "too_large", "unwanted", "other"
]
# Shopify's ReturnReason values.
_SHOPIFY_REASONS = {
    "defective": "DEFECTIVE",
    "wrong_item": "WRONG_ITEM",
    "not_as_described": "NOT_AS_DESCRIBED",
    "too_small": "SIZE_TOO_SMALL",
    "too_large": "SIZE_TOO_LARGE",
    "unwanted": "UNWANTED",
    "other": "OTHER",
}
NOT_FOUND = "I couldn't find an order with that number for you."

_SHIPMENT_WORDS = {
    "delivered": "was delivered",
    "in_transit": "is on its way",
    "out_for_delivery": "is out for delivery today",
    "attempted_delivery": "had a delivery attempt",
    "ready_for_pickup": "is ready for pickup",
    "failure": "had a delivery problem",
}


class ShopRefused(Exception):
    """The store refused the request (bad token, invalid return)."""


def _digits(phone: str | None) -> str:
    return "".join(c for c in phone or "" if c.isdigit())


def belongs_to(order: dict[str, Any], phones: list[str], email: str | None) -> bool:
    """Whether one of `phones` or `email` is the order's own (its, the customer's, or the
    shipping address's)."""
    customer = order.get("customer") or {}
    shipping = order.get("shipping_address") or {}
    order_phones = {
        _digits(p) for p in (order.get("phone"), customer.get("phone"), shipping.get("phone")) if p
    }
    order_emails = {
        str(e).strip().lower() for e in (order.get("email"), customer.get("email")) if e
    }
    wanted = {_digits(p) for p in phones if _digits(p)}
    # Shorter than a whole number is not proof of anything.
    if any(len(p) >= 7 for p in wanted & order_phones):
        return True
    return email is not None and email.strip().lower() in order_emails


def describe(order: dict[str, Any]) -> str:
    """The order's state in a sentence for the caller."""
    name = order.get("name", "Your order")
    if order.get("cancelled_at"):
        return f"Order {name} was cancelled."
    if order.get("financial_status") in ("refunded", "voided"):
        return f"Order {name} was refunded."
    shipments = [f for f in order.get("fulfillments") or [] if f.get("status") == "success"]
    if not shipments:
        if order.get("financial_status") == "pending":
            return f"Order {name} is waiting for payment."
        return f"Order {name} hasn't shipped yet."
    latest = shipments[-1]
    state = _SHIPMENT_WORDS.get(str(latest.get("shipment_status")), "has shipped")
    carrier = latest.get("tracking_company")
    tracking = str(latest.get("tracking_number") or "")
    sentence = f"Order {name} {state}"
    if carrier:
        sentence += f" with {carrier}"
    if tracking:
        sentence += f", tracking number ending in {tracking[-4:]}"
    if order.get("fulfillment_status") == "partial":
        sentence += "; part of it is still to ship"
    return sentence + "."


class Shop(BaseTool):
    metadata = ToolMetadata(
        name="shop",
        description="Tells callers where their order is and starts returns.",
        config_schema={
            "type": "object",
            "properties": {
                "shop_url": {
                    "type": "string",
                    "description": "The store's URL, e.g. https://acme.myshopify.com",
                },
                "api_version": {
                    "type": "string",
                    "description": "Admin API version.",
                    "default": "2024-10",
                },
                ALLOWLIST_CONFIG_KEY: {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Internal hosts or networks the tool may call.",
                    "default": [],
                },
            },
            "required": ["shop_url"],
            "additionalProperties": False,
        },
        auth_type="api_key",
    )

    def __init__(
        self, *, config: Mapping[str, Any], credentials: ToolCredentials | None = None
    ) -> None:
        super().__init__(config=config, credentials=credentials)
        # Orders shown to belong to the caller on this call (the instance lives for one call).
        self._verified: dict[str, dict[str, Any]] = {}

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        token = self.credentials.secrets.get("api_key", "") if self.credentials else ""
        version = str(self.config.get("api_version") or "2024-10")
        base = f"{str(self.config.get('shop_url', '')).rstrip('/')}/admin/api/{version}/"
        async with guarded_client(
            allowlist=Allowlist.from_config(self.config),
            base_url=base,
            headers={"X-Shopify-Access-Token": token},
        ) as client:
            yield client

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        if response.status_code in (401, 403):
            raise ShopRefused("the store refused the access token")
        if response.status_code == 422:
            raise ShopRefused("the store refused the request")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def _order(self, client: httpx.AsyncClient, order_number: str) -> dict[str, Any] | None:
        number = order_number.strip().lstrip("#").strip()
        if not number.isdigit():
            return None
        body = self._check(
            await client.get("orders.json", params={"name": number, "status": "any"})
        )
        orders = [o for o in body.get("orders", []) if str(o.get("name", "")).lstrip("#") == number]
        return orders[0] if orders else None

    @tool_function(idempotent=True, redact_arguments=["email", "phone"])
    async def get_order_status(
        self,
        context: RunContext[Any],
        order_number: str,
        email: str | None = None,
        phone: str | None = None,
    ) -> dict[str, Any]:
        """Tell the caller where their order is. The order must be theirs: by the number they
        call from, or by the email or phone number on the order, which you can ask them for.

        Args:
            order_number: The order number, e.g. 1001 or #1001.
            email: The email address the caller placed the order with.
            phone: The phone number on the order, if not the one they call from.
        """
        async with self._client() as client:
            order = await self._order(client, order_number)
        phones = [p for p in (phone, caller_number(context)) if p]
        if order is None or not belongs_to(order, phones, email):
            # Unknown and someone else's orders are indistinguishable to the caller.
            return {"found": False, "answer": NOT_FOUND}
        self._verified[str(order["name"]).lstrip("#")] = order
        return {
            "found": True,
            "order": order["name"],
            "answer": describe(order),
            "items": [item.get("title", "") for item in order.get("line_items", [])],
        }

    @tool_function()
    async def start_return(
        self,
        context: RunContext[Any],
        order_number: str,
        line_item: str,
        reason: ReturnReason,
    ) -> dict[str, Any]:
        """Start a return of one item of an order already looked up with get_order_status.

        Args:
            order_number: The order number.
            line_item: Which item, as the caller names it (e.g. "the blue sweater").
            reason: Why it goes back.
        """
        order = self._verified.get(order_number.strip().lstrip("#").strip())
        if order is None:
            return {
                "started": False,
                "answer": "I need to look up that order first: what's the email on the order?",
            }
        wanted = line_item.strip().lower()
        matches = [
            item
            for item in order.get("line_items", [])
            if wanted
            and (wanted in str(item.get("title", "")).lower() or wanted == str(item.get("id")))
        ]
        if len(matches) != 1:
            titles = ", ".join(str(i.get("title", "")) for i in order.get("line_items", []))
            return {
                "started": False,
                "answer": f"Which item should go back? The order has: {titles}.",
            }
        if order.get("fulfillment_status") not in ("fulfilled", "partial"):
            return {
                "started": False,
                "answer": "That order hasn't shipped yet, so there is nothing to return yet.",
            }
        item = matches[0]
        async with self._client() as client:
            response = await client.post(
                f"orders/{int(order['id'])}/returns.json",
                json={
                    "return": {
                        "line_items": [
                            {
                                "line_item_id": item["id"],
                                "quantity": 1,
                                "return_reason": _SHOPIFY_REASONS[reason],
                                "customer_note": f"Requested by phone: {reason}",
                            }
                        ]
                    }
                },
            )
            if response.status_code == 422:
                return {
                    "started": False,
                    "answer": f"A return for the {item.get('title')} can't be started: "
                    "it may already be on its way back.",
                }
            created = self._check(response)["return"]
        return {
            "started": True,
            "return": created.get("name"),
            "answer": f"I've asked for a return of the {item.get('title')}; "
            "the store will confirm it by email.",
        }
