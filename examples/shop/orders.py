"""The order service: takes orders and follows them until they are billed or rejected.

Orders come from a generator here (``$SHOP_ORDERS`` of them, every tenth without a
total); a real service would take them from its own API. Run it with
``dotmac-events run shop.orders:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from dotmac.events import App, ConsumerOptions, Event

from .events import INVOICES_ISSUED, ORDERS_CREATED, InvoiceIssued, OrderCreated

log = logging.getLogger(__name__)

app = App(name="orders")
billed: set[int] = set()
rejected: set[int] = set()
expected = 0
_producer: list[asyncio.Task[None]] = []


@app.after_startup
async def start_taking_orders() -> None:
    # After startup: the subscriptions below are live, so no answer is missed.
    _producer.append(asyncio.create_task(_produce(int(os.environ.get("SHOP_ORDERS", "10")))))


@app.on_shutdown
async def stop_taking_orders() -> None:
    for task in _producer:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _produce(count: int) -> None:
    global expected
    expected = count
    for n in range(1, count + 1):
        order = OrderCreated(id=n, customer=f"c{n % 7}", total_cents=0 if n % 10 == 0 else 1000 + n)
        await app.publish(ORDERS_CREATED, order, key=str(n))
    log.info("orders: published %d orders", count)


def _progress() -> None:
    if expected and len(billed) + len(rejected) == expected:
        log.info(
            "orders: all %d orders settled: %d billed, %d rejected", expected, len(billed), len(rejected)
        )


@app.subscriber(INVOICES_ISSUED, group="orders")
async def invoiced(invoice: InvoiceIssued) -> None:
    billed.add(invoice.order_id)
    _progress()


@app.subscriber(f"{ORDERS_CREATED}.dlq", group="orders-rejections", options=ConsumerOptions(max_retries=0))
async def rejected_order(order: OrderCreated, event: Event) -> None:
    rejected.add(order.id)
    log.warning("orders: order %d rejected: %s", order.id, event.headers.get("x-dlq-error-message"))
    _progress()
