"""Closing a bus while the broker is unreachable returns within a bounded time and
loses nothing: unacked deliveries are redelivered later, an unconfirmed publish fails
with a retriable error."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from dotmac.events import ConsumerOptions, Event, TransportUnavailableError, create_bus
from dotmac.events.testing.collect import Collector, wait_for
from dotmac_events_rabbitmq import RabbitMQTransport
from dotmac_events_rabbitmq.testing import RabbitMQNode, TcpRelay, rabbitmq_server_available

pytestmark = pytest.mark.timeout(90)

CONNECT_TIMEOUT = 1.0
DRAIN = 0.3


async def close_while_unreachable(url: str, cut: Callable[[], object]) -> str:
    """Subscribe with events held by a handler, cut the broker off with ``cut``, publish
    one more and close; returns the topic. Checks the bound and the publish's error."""
    name = f"rmq.close.{uuid.uuid4().hex[:8]}"
    gate = asyncio.Event()
    held = Collector(on_event=lambda e: gate.wait())
    bus = create_bus(
        f"{url}{'&' if '?' in url else '?'}connect_timeout={CONNECT_TIMEOUT}&reconnect_interval=0.2"
    )
    await bus.start()
    transport = bus.transport
    assert isinstance(transport, RabbitMQTransport)
    await bus.subscribe(name, held, group="g", options=ConsumerOptions(prefetch_count=4, concurrency=2))
    await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
    await held.wait(lambda c: c.total_calls >= 2, 10)  # two in handlers, one buffered or in flight
    await asyncio.to_thread(cut)
    connection = transport._connection
    assert connection is not None
    await wait_for(lambda: not connection.connected.is_set(), 10, what="the bus to notice the broker is gone")
    publishing = asyncio.create_task(bus.publish(Event(topic=name, payload={"i": 99})))
    started = time.monotonic()
    await asyncio.wait_for(bus.close(timeout=DRAIN), 10)
    took = time.monotonic() - started
    # Handlers drained for DRAIN, then each step that needs the broker is skipped, or
    # bounded by connect_timeout when the connection still looked up.
    assert took < DRAIN + 2 * CONNECT_TIMEOUT + 1, took
    with pytest.raises(TransportUnavailableError, match="closed before RabbitMQ"):
        await publishing
    return name


async def assert_redelivered(url: str, name: str) -> None:
    seen = Collector()
    async with create_bus(url) as again:
        await again.subscribe(name, seen, group="g")
        await seen.wait(lambda c: {0, 1, 2} <= set(c.payloads("i")), 10)


async def test_close_with_the_path_cut_returns_and_loses_nothing(rabbitmq_url: str) -> None:
    relay = await TcpRelay.start(rabbitmq_url)
    try:
        name = await close_while_unreachable(relay.url(), relay.cut)
    finally:
        relay.close()
    await assert_redelivered(rabbitmq_url, name)


@pytest.fixture
def node() -> Iterator[RabbitMQNode]:
    if not rabbitmq_server_available():
        pytest.skip("rabbitmq-server is not installed")
    with RabbitMQNode() as started:
        yield started


async def test_close_with_the_broker_stopped_returns_and_loses_nothing(node: RabbitMQNode) -> None:
    name = await close_while_unreachable(node.url, node.stop)
    await asyncio.to_thread(node.start)
    await assert_redelivered(node.url, name)
