"""The billing worker: bills every order once, publishes the invoice.

Run it with ``dotmac-events run shop.billing:app``.
"""

from __future__ import annotations

import logging

from dotmac.events import App, ConsumerOptions, Event, NonRetryableError
from dotmac.events.app import correlation_id, timeout

from .events import INVOICES_ISSUED, ORDERS_CREATED, InvoiceIssued, OrderCreated

log = logging.getLogger(__name__)

app = App(name="billing")  # the URL comes from --url or $DOTMAC_EVENTS_URL
app.middleware(correlation_id)

TAX_RATE = 0.2


@app.on_startup
async def load_tax_table() -> None:
    # A real worker would open its database pool here, before any event arrives.
    log.info("tax rate %.0f%%", TAX_RATE * 100)


@app.subscriber(
    ORDERS_CREATED,
    group="billing",
    options=ConsumerOptions(max_retries=3, concurrency=4),
    middlewares=[timeout(5.0)],
)
@app.publisher(INVOICES_ISSUED)
async def bill(order: OrderCreated, event: Event) -> InvoiceIssued:
    if order.total_cents <= 0:
        # Retrying will not help: straight to orders.created.dlq, with this reason.
        raise NonRetryableError(f"order {order.id} has no total")
    tax = round(order.total_cents * TAX_RATE)
    log.info("billing order %d (event %s)", order.id, event.event_id)
    return InvoiceIssued(
        order_id=order.id, customer=order.customer, net_cents=order.total_cents - tax, tax_cents=tax
    )
