"""A hostile producer: a plain aiokafka client writes poison among healthy records.

Every healthy record is handled, every poison record is dead-lettered once with its
reason, the group's committed offset reaches the end of the partition (nothing
stranded, nothing redelivered on restart), and the consumer stays live.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from dotmac.events import ConsumerOptions, Event, EventBus
from dotmac.events.testing import Collector, wait_for
from dotmac.events.testing.hostile import ReasonRecorder

MakeBus = Callable[..., EventBus]


def _headers(ce_id: str, **changes: str) -> list[tuple[str, bytes]]:
    headers = {
        "ce_specversion": "1.0",
        "ce_id": ce_id,
        "ce_type": "hostile",
        "ce_source": "raw-producer",
        "ce_time": "2026-12-01T00:00:00Z",
        "content-type": "application/json",
        **changes,
    }
    return [(k, v.encode()) for k, v in headers.items()]


async def _committed(servers: str, group: str, tp: TopicPartition) -> int:
    # A consumer of the group that never joins it: it only fetches the committed offset.
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        committed = await consumer.committed(tp)
    finally:
        await consumer.stop()
    return -1 if committed is None else committed


async def test_poison_records_never_strand_the_partition(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str, report: Callable[[str], None]
) -> None:
    recorder = ReasonRecorder()
    poison = {
        "no-envelope": (b'{"a": 1}', [("x-foreign", b"yes")]),
        "bad-json": (b"{not json", _headers("bad-json")),
        "bad-utf8-body": (b'{"a": "\xff"}', _headers("bad-utf8-body")),
        "edge-time": (b"{}", _headers("edge-time", ce_time="0001-01-01T00:30:00+01:00")),
        "unknown-type": (b"{}", _headers("unknown-type", **{"content-type": "application/x-nothing"})),
        "too-large": (b'{"pad": "' + b"x" * 5000 + b'"}', _headers("too-large")),
    }
    reasons = {"too-large": "too_large"}
    started = time.monotonic()
    bus = make_bus()
    bus.add_observer(recorder)
    async with bus:
        seen = Collector()
        options = ConsumerOptions(prefetch_count=2, max_retries=0, max_message_bytes=4096)
        sub = await bus.subscribe(topic, seen, group=group, options=options)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
        await producer.start()
        try:
            healthy = 0
            for value, headers in poison.values():
                await producer.send_and_wait(
                    topic, json.dumps({"i": healthy}).encode(), partition=0, headers=_headers(f"ok-{healthy}")
                )
                healthy += 1
                await producer.send_and_wait(topic, value, partition=0, headers=headers)
            await producer.send_and_wait(
                topic, json.dumps({"i": healthy}).encode(), partition=0, headers=_headers(f"ok-{healthy}")
            )
            healthy += 1
        finally:
            await producer.stop()
        await seen.wait_count(healthy, 30)
        await wait_for(lambda: len(recorder.letters) >= len(poison), 30, what="the dead letters")
        expected = [(None if k == "no-envelope" else k, reasons.get(k, "decode")) for k in poison]
        assert sorted(recorder.letters, key=str) == sorted(expected, key=str)
        total = healthy + len(poison)
        tp = TopicPartition(topic, 0)
        deadline = time.monotonic() + 30
        committed = await _committed(kafka_servers, group, tp)
        while committed < total and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the commit travels asynchronously; poll the broker's answer
            committed = await _committed(kafka_servers, group, tp)
        assert committed == total, f"committed offset {committed}, end of partition {total}"
        assert sub.active
        await bus.publish(Event(topic=topic, payload={"i": 99}))
        await seen.wait(lambda c: 99 in c.payloads("i"), 30, what="an event after the poison")
    report(
        f"kafka hostile stream: attempted={total} handled={healthy} dead_lettered={len(recorder.letters)} "
        f"lost=0 committed={committed}/{total} seconds={time.monotonic() - started:.2f}"
    )
