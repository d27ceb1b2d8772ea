"""The official CloudEvents SDK and the bus on Redis Streams, both directions, both modes.

CloudEvents has no Redis binding; the bus carries the Kafka binding's names as entry
fields (``ce_*``, ``content-type``, the key in ``@key``, the body in ``@data``), so a
producer in any language writes an SDK record with one ``XADD`` and reads one with
``XRANGE``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from dotmac.events import EventBus
from dotmac.events.testing import Collector
from dotmac.events.testing.cloudevents_sdk import check_sdk_event, our_event, read_record, sdk_record
from dotmac_events_redis import DATA_FIELD, KEY_FIELD

pytest.importorskip("cloudevents.core.bindings.kafka")


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_an_sdk_entry_is_consumed_with_every_attribute(
    buses: Callable[..., EventBus], redis_url: str, prefix: str, mode: str
) -> None:
    record = sdk_record(mode)
    fields: dict[Any, Any] = {**record.headers, KEY_FIELD: record.key, DATA_FIELD: record.value}
    seen = Collector()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with buses() as bus:
            await bus.subscribe("orders", seen)
            await raw.xadd(f"{prefix}orders", fields)
            await seen.wait_count(1, 10)
    finally:
        await raw.aclose()
    check_sdk_event(seen.events[0])


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_the_sdk_parses_what_the_bus_published(
    buses: Callable[..., EventBus], redis_url: str, prefix: str, mode: str
) -> None:
    event, expected = our_event("orders")
    async with buses(bus_options={"content_mode": mode}) as bus:
        await bus.publish(event)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        ((_, entry),) = await raw.xrange(f"{prefix}orders")
    finally:
        await raw.aclose()
    fields = dict(entry)
    key = fields.pop(KEY_FIELD.encode())
    value = fields.pop(DATA_FIELD.encode())
    back = read_record(mode, {k.decode(): v for k, v in fields.items()}, key, value)
    assert back.get_attributes() == {**expected, "source": "dotmac-events"}
    assert back.get_data() == {"id": 7}
