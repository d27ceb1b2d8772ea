"""Closing a bus while its NATS server is stopped returns promptly; the events a
handler held are delivered again once the server is back."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.testing import Collector, wait_for
from dotmac_events_nats.testing import NatsServer

pytestmark = pytest.mark.timeout(60)

DRAIN = 0.3


async def test_close_with_the_server_stopped_returns_and_loses_nothing() -> None:
    name = f"nats.close.{uuid.uuid4().hex[:8]}"
    with NatsServer() as server:
        gate = asyncio.Event()
        held = Collector(on_event=lambda e: gate.wait())
        url = f"{server.url}?ack_wait=2"  # held events come back 2 s after the server
        bus = create_bus(url)
        await bus.start()
        await bus.subscribe(name, held, group="g", options=ConsumerOptions(concurrency=2))
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
        await held.wait(lambda c: c.total_calls >= 2, 10)
        await asyncio.to_thread(server.stop)
        nc = bus.transport._nc  # type: ignore[attr-defined]
        await wait_for(lambda: not nc.is_connected, 10, what="the bus to notice the server is gone")
        started = time.monotonic()
        await asyncio.wait_for(bus.close(timeout=DRAIN), 10)
        took = time.monotonic() - started
        # Handlers drained for DRAIN, the client's close bounded by connect_timeout (5 s).
        assert took < DRAIN + 5 + 1, took
        await asyncio.to_thread(server.start)
        seen = Collector()
        async with create_bus(url) as again:
            await again.subscribe(name, seen, group="g")
            await seen.wait(lambda c: {0, 1, 2} <= set(c.payloads("i")), 15)
