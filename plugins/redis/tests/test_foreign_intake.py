"""Entries written by a plain Redis client (no envelope) consumed with intake="foreign"."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import redis.asyncio as aioredis

from dotmac.events import ConsumerOptions, EventBus
from dotmac.events.testing import Collector
from dotmac_events_redis import DATA_FIELD, KEY_FIELD

FOREIGN = ConsumerOptions(intake="foreign", max_retries=0)


async def test_plain_entries_are_events(buses: Callable[..., EventBus], redis_url: str, prefix: str) -> None:
    seen = Collector()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with buses() as bus:
            await bus.subscribe("orders", seen, options=FOREIGN)
            entry = await raw.xadd(
                f"{prefix}orders",
                {DATA_FIELD: b'{"id": 7}', KEY_FIELD: "order-7", "x-src": "cli"},
                id="1764558000000-0",
            )
            await seen.wait_count(1, 10)
    finally:
        await raw.aclose()
    event = seen.events[0]
    assert event.event_id == f"orders:{entry.decode()}" == "orders:1764558000000-0"
    assert event.payload == {"id": 7}
    assert event.key == "order-7"
    assert dict(event.headers) == {"x-src": "cli"}
    assert event.metadata.occurred_at == datetime.fromtimestamp(1764558000, timezone.utc)


async def test_plain_bytes_entries_are_raw_events(
    buses: Callable[..., EventBus], redis_url: str, prefix: str
) -> None:
    seen = Collector()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with buses(bus_options={"topic_codecs": {"blobs": "raw"}}) as bus:
            await bus.subscribe("blobs", seen, options=FOREIGN)
            entry = await raw.xadd(f"{prefix}blobs", {DATA_FIELD: b"\x00\xffbinary"})
            await seen.wait_count(1, 10)
    finally:
        await raw.aclose()
    event = seen.events[0]
    assert event.event_id == f"blobs:{entry.decode()}"
    assert event.payload == b"\x00\xffbinary"
    assert event.key is None
