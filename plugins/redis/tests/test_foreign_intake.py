"""Entries written by a plain Redis client (no envelope) consumed with intake="foreign"."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
import redis.asyncio as aioredis

from dotmac.events import ConsumerOptions, Event, EventBus
from dotmac.events.testing import Collector, wait_dead_letters
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


async def _cli(redis_url: str, *args: str | bytes) -> str:
    """Run ``redis-cli`` against the test server; its reply as text."""
    proc = await asyncio.create_subprocess_exec(
        "redis-cli", "-u", redis_url, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode().strip()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_entries_of_plain_fields_have_the_fields_as_payload(
    buses: Callable[..., EventBus], redis_url: str, prefix: str
) -> None:
    seen = Collector()
    stream = f"{prefix}orders"
    async with buses() as bus:
        await bus.subscribe("orders", seen, options=FOREIGN)
        first = await _cli(redis_url, "XADD", stream, "*", "id", "7", "status", "new")
        keyed = await _cli(redis_url, "XADD", stream, "*", KEY_FIELD, "order-8", "id", "8", "note", "café")
        bad = await _cli(redis_url, "XADD", stream, "*", "id", b"9\xff")
        await seen.wait_count(2, 10)
        letters = await wait_dead_letters(bus, "orders.dlq", 1, 10)
        raw = aioredis.Redis.from_url(redis_url)
        try:
            [(_, fields)] = await raw.xrange(f"{prefix}orders.dlq")
        finally:
            await raw.aclose()
    plain, with_key = seen.events
    assert plain.event_id == f"orders:{first}"
    assert plain.payload == {"id": "7", "status": "new"}
    assert list(plain.payload) == ["id", "status"]
    assert dict(plain.headers) == {}
    assert plain.key is None
    assert plain.metadata.content_type is None
    assert plain.metadata.occurred_at == datetime.fromtimestamp(int(first.split("-")[0]) / 1000, timezone.utc)
    assert with_key.event_id == f"orders:{keyed}"
    assert with_key.payload == {"id": "8", "note": "café"}
    assert with_key.key == "order-8"
    # A value that is not UTF-8 is refused like a header value, and the dead letter
    # keeps the bytes as they arrived.
    assert letters[0].reason == "decode"
    assert "not valid UTF-8" in (letters[0].error_message or "")
    assert fields[b"id"] == b"9\xff"
    assert bad != first


async def test_a_replayed_foreign_entry_keeps_the_id_intake_gave_it(
    buses: Callable[..., EventBus], redis_url: str, prefix: str
) -> None:
    broken = True

    def fail(event: Event, count: int) -> BaseException | None:
        return RuntimeError("not yet") if broken else None

    seen = Collector(fail=fail)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with buses() as bus:
            await bus.subscribe("orders", seen, group="billing", options=FOREIGN)
            body = (await raw.xadd(f"{prefix}orders", {DATA_FIELD: b'{"id": 7}', KEY_FIELD: "k7"})).decode()
            fields = (await raw.xadd(f"{prefix}orders", {"id": "8", "status": "new"})).decode()
            letters = await wait_dead_letters(bus, "orders.dlq", 2, 10)
            assert [letter.event_id for letter in letters] == [f"orders:{body}", f"orders:{fields}"]
            assert [letter.event.payload for letter in letters if letter.event] == [
                {"id": 7},
                {"id": "8", "status": "new"},
            ]
            broken = False
            # Targeted first, then the rest; the ledger keeps the first from going twice.
            assert await bus.dlq.replay("orders.dlq", event_ids=[f"orders:{fields}"]) == 1
            await seen.wait_count(1, 10)
            assert await bus.dlq.replay("orders.dlq") == 1
            await seen.wait_count(2, 10)
            assert await bus.dlq.replay("orders.dlq") == 0
    finally:
        await raw.aclose()
    by_id = {event.event_id: event for event in seen.events}
    assert set(by_id) == {f"orders:{body}", f"orders:{fields}"}
    assert by_id[f"orders:{body}"].payload == {"id": 7}
    assert by_id[f"orders:{body}"].key == "k7"
    assert by_id[f"orders:{fields}"].payload == {"id": "8", "status": "new"}
    assert by_id[f"orders:{fields}"].metadata.occurred_at == datetime.fromtimestamp(
        int(fields.split("-")[0]) / 1000, timezone.utc
    )
    assert seen.calls == {f"orders:{body}": 2, f"orders:{fields}": 2}
