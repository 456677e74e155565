"""STAND-IN for a Shopify-style store's Admin REST API
(https://{shop}.myshopify.com/admin/api/{version}) — not Shopify.

- `GET /admin/api/{version}/orders.json?name=1001&status=any` — Shopify's documented order
  lookup: `{orders: [{id, name, email, phone, customer, shipping_address, financial_status,
  fulfillment_status, cancelled_at, line_items, fulfillments}]}`.
- `POST /admin/api/{version}/orders/{order_id}/returns.json` — `{return: {line_items:
  [{line_item_id, quantity, return_reason, customer_note}]}}` → 201 `{return: {id, name,
  status: "REQUESTED", line_items}}`. Real Shopify offers returns only through its GraphQL
  Admin API (`returnRequest`, same fields); this REST shape is the stand-in's own, kept to the
  fields of that mutation.

Auth: `X-Shopify-Access-Token`; anything else gets 401 `{"errors": "[API] Invalid API key or
access token (unrecognized login or wrong password)"}`. Invalid returns get 422 `{errors}`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from voiceagents.worker.standins.server import ApiError, StandInServer

RETURN_REASONS = (
    "COLOR",
    "DEFECTIVE",
    "NOT_AS_DESCRIBED",
    "OTHER",
    "SIZE_TOO_LARGE",
    "SIZE_TOO_SMALL",
    "STYLE",
    "UNWANTED",
    "WRONG_ITEM",
)


@dataclass
class Order:
    id: int
    number: int
    email: str
    phone: str | None
    items: list[dict[str, Any]]
    financial_status: str = "paid"
    fulfillment_status: str | None = None
    cancelled_at: datetime | None = None
    fulfillments: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def name(self) -> str:
        return f"#{self.number}"

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "order_number": self.number,
            "email": self.email,
            "phone": self.phone,
            "customer": {"email": self.email, "phone": self.phone},
            "shipping_address": {"phone": self.phone},
            "financial_status": self.financial_status,
            "fulfillment_status": self.fulfillment_status,
            "cancelled_at": None if self.cancelled_at is None else self.cancelled_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "line_items": self.items,
            "fulfillments": self.fulfillments,
        }


@dataclass
class Return:
    id: int
    order_id: int
    name: str
    line_items: list[dict[str, Any]]
    status: str = "REQUESTED"

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "name": self.name,
            "status": self.status,
            "line_items": self.line_items,
        }


def _unprocessable(message: str) -> ApiError:
    return ApiError(web.json_response({"errors": {"base": [message]}}, status=422))


class ShopifyStandIn(StandInServer):
    """A local stand-in for a Shopify-style store; `shop_url` goes where the shop URL would."""

    API_VERSION = "2024-10"

    def __init__(self, *, access_token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self._token = access_token
        self.orders: dict[int, Order] = {}
        self.returns: list[Return] = []
        self._ids = itertools.count(450789469)
        self._numbers = itertools.count(1001)
        self.requests: list[tuple[str, str]] = []

    @property
    def shop_url(self) -> str:
        return self.origin

    def add_order(
        self,
        *,
        email: str,
        phone: str | None,
        items: list[str],
        shipped_with: tuple[str, str] | None = None,
        delivered: bool = False,
    ) -> Order:
        """An order of `items` (titles); `shipped_with` = (carrier, tracking number)."""
        order = Order(
            id=next(self._ids),
            number=next(self._numbers),
            email=email,
            phone=phone,
            items=[
                {"id": next(self._ids), "title": title, "quantity": 1, "fulfillable_quantity": 0}
                for title in items
            ],
        )
        if shipped_with is not None:
            carrier, tracking = shipped_with
            order.fulfillment_status = "fulfilled"
            order.fulfillments = [
                {
                    "id": next(self._ids),
                    "status": "success",
                    "shipment_status": "delivered" if delivered else "in_transit",
                    "tracking_company": carrier,
                    "tracking_number": tracking,
                    "created_at": datetime.now(UTC).isoformat(),
                    "line_items": order.items,
                }
            ]
        self.orders[order.id] = order
        return order

    def routes(self) -> list[web.RouteDef]:
        base = "/admin/api/{version}"
        return [
            web.get(base + "/orders.json", self._orders),
            web.post(base + "/orders/{order_id}/returns.json", self._create_return),
        ]

    def _authorize(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("X-Shopify-Access-Token") != self._token:
            raise ApiError(
                web.json_response(
                    {
                        "errors": "[API] Invalid API key or access token (unrecognized login "
                        "or wrong password)"
                    },
                    status=401,
                )
            )

    async def _orders(self, request: web.Request) -> web.Response:
        self._authorize(request)
        name = request.query.get("name", "").strip().lstrip("#")
        found = [o for o in self.orders.values() if not name or str(o.number) == name]
        return web.json_response({"orders": [o.resource() for o in found]})

    async def _create_return(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            order = self.orders.get(int(request.match_info["order_id"]))
        except ValueError:
            order = None
        if order is None:
            raise ApiError(web.json_response({"errors": "Not Found"}, status=404))
        try:
            body = await request.json()
            lines = body["return"]["line_items"]
        except (ValueError, KeyError, TypeError):
            raise _unprocessable("return.line_items is required") from None
        if not isinstance(lines, list) or not lines:
            raise _unprocessable("return.line_items is required")
        if order.fulfillment_status != "fulfilled":
            raise _unprocessable("Order has no fulfilled line items to return")
        items = {item["id"]: item for item in order.items}
        already = {line["line_item_id"] for r in self.returns for line in r.line_items}
        for line in lines:
            if line.get("line_item_id") not in items:
                raise _unprocessable(f"line item {line.get('line_item_id')} is not in the order")
            if line["line_item_id"] in already:
                raise _unprocessable("Line item has already been returned")
            if line.get("return_reason") not in RETURN_REASONS:
                raise _unprocessable(f"return_reason {line.get('return_reason')} is invalid")
        created = Return(
            id=next(self._ids),
            order_id=order.id,
            name=f"{order.name}-R{1 + sum(r.order_id == order.id for r in self.returns)}",
            line_items=[
                {
                    "line_item_id": line["line_item_id"],
                    "quantity": int(line.get("quantity", 1)),
                    "return_reason": line["return_reason"],
                    "customer_note": str(line.get("customer_note", "")),
                }
                for line in lines
            ],
        )
        self.returns.append(created)
        return web.json_response({"return": created.resource()}, status=201)
