"""The billing worker's tests: the handler runs on a private memory:// bus with TestApp."""

from __future__ import annotations

import pytest

from dotmac.events import App
from dotmac.events.testing import TestApp
from shop.billing import app
from shop.events import OrderCreated


async def test_an_order_is_billed_once() -> None:
    async with TestApp(app) as client:
        await client.publish("orders.created", OrderCreated(id=7, customer="acme", total_cents=1200))
        (invoice,) = await client.wait_published("invoices.issued")
    assert invoice.payload == {"order_id": 7, "customer": "acme", "net_cents": 960, "tax_cents": 240}


async def test_an_order_without_total_is_rejected_not_retried() -> None:
    async with TestApp(app) as client:
        await client.publish("orders.created", OrderCreated(id=8, customer="acme", total_cents=0))
        (letter,) = await client.wait_dead_lettered("orders.created")
    assert letter.reason == "non_retryable"
    assert letter.error_message == "order 8 has no total"
    assert letter.attempts == 1


async def test_a_malformed_order_is_dead_lettered_with_the_field() -> None:
    async with TestApp(app) as client:
        await client.publish("orders.created", {"id": 9, "customer": "acme"})
        (letter,) = await client.wait_dead_lettered("orders.created")
    assert "required field missing @ payload.total_cents" in (letter.error_message or "")


# The same with the pytest plugin's fixture: say which app, take ``dotmac_client``.
@pytest.fixture
def dotmac_app() -> App:
    return app


async def test_invoices_carry_the_order_correlation(dotmac_client: TestApp) -> None:
    order = await dotmac_client.publish("orders.created", OrderCreated(id=10, customer="b", total_cents=500))
    (invoice,) = await dotmac_client.wait_published("invoices.issued")
    assert invoice.metadata.causation_id == order.event_id
    assert invoice.metadata.correlation_id == order.event_id
