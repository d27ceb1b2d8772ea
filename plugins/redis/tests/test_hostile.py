"""A hostile producer: a plain redis-py client XADDs poison among healthy entries.

Every healthy entry is handled, every poison entry is dead-lettered once with its
reason, the group's pending-entries list empties (no prefetch slot leaks), and the
consumer stays live.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from dotmac.events import ConsumerOptions, Event, EventBus
from dotmac.events.testing import Collector, wait_for
from dotmac.events.testing.hostile import ReasonRecorder


def _fields(ce_id: str, data: bytes, **changes: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ce_specversion": "1.0",
        "ce_id": ce_id,
        "ce_type": "hostile",
        "ce_source": "raw-producer",
        "ce_time": "2026-12-01T00:00:00Z",
        "content-type": "application/json",
        **changes,
    }
    fields["@data"] = data
    return fields


async def test_poison_entries_never_strand_the_group(
    buses: Callable[..., EventBus], redis_url: str, prefix: str, report: Callable[..., None]
) -> None:
    topic, group = "hostile.orders", "billing"
    stream = f"{prefix}{topic}"
    recorder = ReasonRecorder()
    poison: dict[str, dict[str, Any]] = {
        "no-envelope": {"@data": b'{"a": 1}', "x-foreign": "yes"},
        # An entry without @data is a CloudEvent with no data (read, payload None);
        # a batch of events in one entry is not read.
        "batch": _fields("batch", b"[]", **{"content-type": "application/cloudevents-batch+json"}),
        "bad-json": _fields("bad-json", b"{not json"),
        "bad-utf8-body": _fields("bad-utf8-body", b'{"a": "\xff"}'),
        "edge-time-low": _fields("edge-time-low", b"{}", ce_time="0001-01-01T00:30:00+01:00"),
        "edge-time-high": _fields("edge-time-high", b"{}", ce_time="9999-12-31T23:59:59-01:00"),
        "unknown-type": _fields("unknown-type", b"{}", **{"content-type": "application/x-nothing"}),
        "too-large": _fields("too-large", b'{"pad": "' + b"x" * 5000 + b'"}'),
    }
    reasons = {"too-large": "too_large"}
    started = time.monotonic()
    raw = aioredis.Redis.from_url(redis_url)
    bus = buses()
    bus.add_observer(recorder)
    try:
        async with bus:
            seen = Collector()
            # A prefetch of 2: two leaked slots would stop this consumer for good.
            options = ConsumerOptions(prefetch_count=2, max_retries=0, max_message_bytes=4096)
            sub = await bus.subscribe(topic, seen, group=group, options=options)
            healthy = 0
            for fields in poison.values():
                await raw.xadd(stream, _fields(f"ok-{healthy}", json.dumps({"i": healthy}).encode()))
                healthy += 1
                await raw.xadd(stream, fields)
            await raw.xadd(stream, _fields(f"ok-{healthy}", json.dumps({"i": healthy}).encode()))
            healthy += 1
            await seen.wait_count(healthy, 20)
            await wait_for(lambda: len(recorder.letters) >= len(poison), 20, what="the dead letters")
            expected = [(None if k == "no-envelope" else k, reasons.get(k, "decode")) for k in poison]
            assert sorted(recorder.letters, key=str) == sorted(expected, key=str)
            await wait_for(lambda: sub.handled == healthy, 20, what="settled acks")
            pending = await raw.xpending(stream, group)
            assert pending["pending"] == 0, pending
            assert sub.active
            await bus.publish(Event(topic=topic, payload={"i": 99}))
            await seen.wait(lambda c: 99 in c.payloads("i"), 20, what="an event after the poison")
    finally:
        await raw.aclose()
    report(
        attempted=healthy + len(poison),
        handled=healthy,
        dead_lettered=len(recorder.letters),
        lost=0,
        pending_after=0,
        seconds=round(time.monotonic() - started, 2),
    )


async def test_undecodable_and_repeated_fields_are_dead_lettered(
    buses: Callable[..., EventBus], redis_url: str, prefix: str
) -> None:
    """Header bytes that are not UTF-8 and a field given twice with different values
    (XADD accepts both) are dead-lettered with reason ``decode``; nothing is changed."""
    topic = "hostile.fields"
    stream = f"{prefix}{topic}"
    recorder = ReasonRecorder()
    raw = aioredis.Redis.from_url(redis_url)
    bus = buses()
    bus.add_observer(recorder)
    try:
        async with bus:
            seen = Collector()
            sub = await bus.subscribe(topic, seen, group="g", options=ConsumerOptions(max_retries=0))
            bad_utf8 = _fields("bad-utf8-header", b"{}")
            bad_utf8["x-note"] = b"caf\xe9"
            await raw.xadd(stream, bad_utf8)
            repeated = [
                "ce_id",
                "repeated",
                *sum(([k, v] for k, v in _fields("repeated", b"{}").items()), []),
            ]
            await raw.execute_command("XADD", stream, "*", *repeated, "ce_tenantid", "a", "ce_tenantid", "b")
            await raw.xadd(stream, _fields("fine", b"{}"))
            await seen.wait_count(1, 20)
            await wait_for(lambda: len(recorder.letters) >= 2, 20, what="the dead letters")
            assert sorted(recorder.letters, key=str) == [
                ("bad-utf8-header", "decode"),
                ("repeated", "decode"),
            ]
            assert [e.event_id for e in seen.events] == ["fine"]
            assert sub.active
            # The dead letter carries the bytes that arrived, not a replacement character.
            dead = {fields[b"ce_id"]: fields for _id, fields in await raw.xrange(f"{stream}.dlq")}
            assert dead[b"bad-utf8-header"][b"x-note"] == b"caf\xe9"
    finally:
        await raw.aclose()


async def test_namespaces_sharing_a_key_prefix_cannot_reach_each_other(
    buses: Callable[..., EventBus],
) -> None:
    from dotmac.events import InvalidTopicError

    tenant = buses(namespace="acme")
    other = buses(namespace="globex")
    plain = buses()
    async with tenant, other, plain:
        seen = Collector()
        await tenant.subscribe("orders", seen, group="billing")
        await other.publish(Event(topic="orders", payload={"from": "globex"}))
        await plain.publish(Event(topic="orders", payload={"from": "no namespace"}))
        with pytest.raises(InvalidTopicError):
            Event(topic="acme:orders", payload={})  # the only way to spell the tenant's key
        await tenant.publish(Event(topic="orders", payload={"from": "acme"}))
        await seen.wait_count(1, 20)
        assert seen.payloads("from") == ["acme"]
        key = tenant.transport.config.stream_key("orders")  # type: ignore[attr-defined]
        assert key.endswith("acme:orders") and key != plain.transport.config.stream_key("orders")  # type: ignore[attr-defined]


async def test_dead_letter_streams_have_a_cap_of_their_own(
    buses: Callable[..., EventBus], redis_url: str, prefix: str
) -> None:
    from dotmac.events import NonRetryableError

    async def fail(event: Event) -> None:
        raise NonRetryableError("no")

    raw = aioredis.Redis.from_url(redis_url)
    capped, uncapped = buses(dead_letter_max_length=10), buses(key_prefix=f"{prefix}u:")
    try:
        for bus, key in ((capped, f"{prefix}dlq.cap.dlq"), (uncapped, f"{prefix}u:dlq.cap.dlq")):
            async with bus:
                sub = await bus.subscribe("dlq.cap", fail, group="g")
                await bus.publish_many([Event(topic="dlq.cap", payload={"i": i}) for i in range(30)])
                await wait_for(lambda sub=sub: sub.dead_lettered == 30, 20, what="30 dead letters")
                assert await raw.xlen(f"{key.removesuffix('.dlq')}") == 30
                length = await raw.xlen(key)
                if bus is capped:
                    assert length <= 11  # the cap, plus the 1% slack of one entry
                else:
                    assert length == 30
    finally:
        await raw.aclose()
