"""The events the two services exchange: plain attrs classes, shared by both."""

from __future__ import annotations

from attrs import frozen

ORDERS_CREATED = "orders.created"
INVOICES_ISSUED = "invoices.issued"


@frozen
class OrderCreated:
    id: int
    customer: str
    total_cents: int


@frozen
class InvoiceIssued:
    order_id: int
    customer: str
    net_cents: int
    tax_cents: int
