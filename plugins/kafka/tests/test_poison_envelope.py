"""Envelopes a plain producer can write but the bus must not guess at: each is
dead-lettered with reason ``decode``, exactly as it arrived, and the consumer moves on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from dotmac.events import EventBus, Message
from dotmac.events.testing import Collector

MakeBus = Callable[..., EventBus]

BASE = [
    ("ce_specversion", b"1.0"),
    ("ce_type", b"payment.received"),
    ("ce_source", b"/billing"),
    ("content-type", b"application/json"),
]

# name -> (record key, extra headers); each must be dead-lettered with reason "decode".
POISON: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {
    "tenant-twice": (b"k", [("ce_tenantid", b"acme"), ("ce_tenantid", b"other")]),
    "tenant-two-spellings": (b"k", [("ce_tenantid", b"acme"), ("CE_TENANTID", b"other")]),
    "user-header-twice": (b"k", [("x-origin", b"a"), ("x-origin", b"b")]),
    "bad-utf8-user-value": (b"k", [("x-origin", b"caf\xe9")]),
    "bad-utf8-envelope-value": (b"k", [("ce_tenantid", b"\xff\xfe")]),
    "bad-utf8-key": (b"\xc3\x28", []),
    "specversion-2": (b"k", [("ce_specversion", b"2.0")]),
    "time-before-year-1": (b"k", [("ce_time", b"0001-01-01T00:30:00+01:00")]),
    "time-after-9999": (b"k", [("ce_time", b"9999-12-31T23:30:00-01:00")]),
}


Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]  # value, key, headers


async def produce(servers: str, topic: str, records: list[Record]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    try:
        for value, key, headers in records:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def _read_until(bus: EventBus, topic: str, count: int, timeout: float) -> list[Message]:
    deadline = time.monotonic() + timeout
    while True:
        messages = await bus.transport.read(topic, limit=count + 10)
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        await asyncio.sleep(0.1)


async def test_ambiguous_and_invalid_envelopes_are_dead_lettered(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str
) -> None:
    async with make_bus() as bus:
        seen = Collector()
        await bus.subscribe(topic, seen, group=group)
        sent: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {}
        records: list[Record] = []
        for i, (name, (key, extra)) in enumerate([("healthy-1", (b"k", [])), *POISON.items()]):
            names = {n.lower() for n, _ in extra}
            headers = [h for h in BASE if h[0] not in names] + [("ce_id", name.encode()), *extra]
            records.append((json.dumps({"i": i}).encode(), key, headers))
            sent[name] = (key, headers)
        # A healthy event after all the poison: the consumer must still be live.
        records.append((b'{"i": -1}', b"k", [*BASE, ("ce_id", b"healthy-2")]))
        await produce(kafka_servers, topic, records)
        await seen.wait_count(2, 20)
        letters = await _read_until(bus, f"{topic}.dlq", len(POISON), 20)

    assert sorted(e.event_id for e in seen.events) == ["healthy-1", "healthy-2"]
    by_id: dict[str, Message] = {}
    for letter in letters:
        ids = [v for n, v in letter.headers.items() if n == "ce_id"]
        assert len(ids) == 1
        assert ids[0] not in by_id, f"{ids[0]} dead-lettered twice"
        by_id[ids[0]] = letter
    assert sorted(by_id) == sorted(POISON)
    for name, letter in by_id.items():
        assert letter.headers["x-dlq-reason"] == "decode", name
        assert letter.headers["x-dlq-error-type"] == "DecodeError", name
        key, headers = sent[name]
        # The dead letter carries the bytes that arrived, not a U+FFFD substitute.
        assert letter.key is not None
        assert letter.key.encode("utf-8", "surrogateescape") == key, name
        for header, value in headers:
            if name in ("tenant-twice", "user-header-twice") and header in ("ce_tenantid", "x-origin"):
                continue  # one of the two values; which one the mapping kept is not the point
            assert letter.headers[header].encode("utf-8", "surrogateescape") == value, (name, header)
    assert "ce_tenantid" in by_id["tenant-twice"].headers["x-dlq-error-message"]
    assert "not valid UTF-8" in by_id["bad-utf8-user-value"].headers["x-dlq-error-message"]
    assert "ce_specversion '2.0'" in by_id["specversion-2"].headers["x-dlq-error-message"]
    assert "ce_time" in by_id["time-before-year-1"].headers["x-dlq-error-message"]


async def test_the_same_header_twice_with_one_value_is_one_header(
    make_bus: MakeBus, kafka_servers: str, topic: str
) -> None:
    async with make_bus() as bus:
        seen = Collector()
        await bus.subscribe(topic, seen)
        twice = [*BASE, ("ce_id", b"e-1"), ("ce_tenantid", b"acme"), ("ce_tenantid", b"acme")]
        await produce(kafka_servers, topic, [(b"{}", None, twice)])
        await seen.wait_count(1, 10)
    assert seen.events[0].tenant_id == "acme"
