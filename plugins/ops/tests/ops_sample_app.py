"""A small service app for the AsyncAPI and ``run --http`` tests."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TypedDict

from attrs import frozen
from pydantic import BaseModel

from dotmac.events import Event
from dotmac.events.app import App

app = App(name="billing")


@frozen
class Line:
    sku: str
    quantity: int


@frozen
class OrderCreated:
    id: int
    total_cents: int
    lines: list[Line]
    placed_at: datetime
    note: str | None = None


@dataclasses.dataclass
class Refund:
    order: int
    reason: str


class Shipped(TypedDict):
    order: int
    carrier: str


class Invoice(BaseModel):
    order: int
    amount_cents: int
    customer: Customer


class Customer(BaseModel):
    name: str


Invoice.model_rebuild()


@app.subscriber("orders.created", group="billing")
@app.publisher("invoices.issued")
async def bill(order: OrderCreated) -> Invoice:
    """Bills an order and issues its invoice."""
    return Invoice(order=order.id, amount_cents=order.total_cents, customer=Customer(name="x"))


@app.subscriber("orders.refunded", group="billing")
async def refund(refund: Refund) -> None:
    return None


@app.subscriber(["orders.shipped", "orders.delivered"])
async def track(shipped: Shipped) -> None:
    return None


@app.subscriber("audit.raw", group="audit")
async def audit(event: Event) -> None:
    return None
