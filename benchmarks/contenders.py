"""The contenders compared with this bus: raw clients and FastStream.

Each does what a careful hand-written service would do for the same at-least-once
work, with the same payload, key, two headers and orjson (sorted keys, like the
bus's JSON codec):

- ``QueueContender``: an ``asyncio.Queue`` per consumer group, ``task_done`` after
  the handler.
- ``RedisContender``: redis-py XADD / XREADGROUP (COUNT 100) / XACK. With
  ``batched=False`` every command is its own await (one XACK per event); with
  ``batched=True`` ``publish_batch`` pipelines the XADDs and the consumer acks each
  read batch with one XACK after handling it.
- ``KafkaContender``: aiokafka, ``acks="all"``, ``linger_ms=0`` (aiokafka's and the
  bus's defaults); ``send_and_wait`` per event or ``send`` + gather per batch; the consumer
  uses ``getmany`` and commits the handled offsets after each batch.
- ``FastStreamRedisContender`` / ``FastStreamKafkaContender``: FastStream with
  ``AckPolicy.ACK`` (ack or commit after the handler); its per-message log is off so
  that logging I/O is not what gets measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from dotmac.events.bench import HEADERS, BusContender, Contender, PayloadHandler, Stop

OPTIONS = orjson.OPT_SORT_KEYS
KAFKA_PARTITIONS = 3
# Tansu only (run.py always starts its own Tansu): Tansu holds a group join for about
# session_timeout/2 (at least 1 s); these make it 1 s. A broker with Apache Kafka's
# default limits refuses session_timeout_ms below 6000 (group.min.session.timeout.ms).
KAFKA_CONSUMER: dict[str, int] = {
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 2000,
    "fetch_max_wait_ms": 500,  # aiokafka's default
}
if os.environ.get("DOTMAC_BENCH_KAFKA_EXTERNAL"):
    # A broker this run did not start (run.py --kafka-bootstrap): Apache Kafka's
    # group.min.session.timeout.ms is 6000, and noida-db keeps the same limit.
    KAFKA_CONSUMER.update(session_timeout_ms=6000, heartbeat_interval_ms=500, rebalance_timeout_ms=6000)


def low_latency_kafka() -> None:
    """Settings of the latency workloads: Tansu answers a parked fetch only when
    fetch_max_wait_ms runs out, not when a record arrives, so at the default 500 ms
    every client shows ~250 ms. 5 ms keeps the broker's timer from hiding the clients'
    own latency; it is not used for throughput, where polling every 5 ms slows Tansu
    down as partitions grow."""
    KAFKA_CONSUMER["fetch_max_wait_ms"] = 5


def bus_kafka_query() -> str:
    """The bus with the client settings of the raw aiokafka contender (spelled out,
    though linger_ms=0 is the default of both)."""
    pairs = [f"{k}={v}" for k, v in KAFKA_CONSUMER.items()]
    return "&".join([*pairs, "linger_ms=0", "enable_idempotence=false"])


KAFKA_HEADERS = [(k, v.encode()) for k, v in HEADERS.items()]


def _encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=OPTIONS)


async def _finish(task: asyncio.Task[None], timeout: float = 5.0) -> None:
    """Let a consumer loop notice its stop flag; cancel it if it does not."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- asyncio.Queue -------------------------------------------------------------------------
class _QueueTopic:
    def __init__(self, retention: int) -> None:
        self.retained: deque[tuple[str, Any, bytes]] = deque(maxlen=retention)
        self.queues: list[asyncio.Queue[tuple[str, Any, bytes]]] = []


class QueueContender(Contender):
    """In-process: one bounded ``asyncio.Queue`` per group, orjson on both sides."""

    can_batch = False

    def __init__(self, *, maxsize: int = 10_000, retention: int = 10_000) -> None:
        self.name = "asyncio.Queue"
        self.maxsize = maxsize
        self.retention = retention
        self.topics: dict[str, _QueueTopic] = {}

    def _topic(self, name: str) -> _QueueTopic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _QueueTopic(self.retention)
        return topic

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        t = self._topic(topic)
        message = (payload["customer_id"], HEADERS, _encode(payload))
        t.retained.append(message)
        for queue in t.queues:
            await queue.put(message)

    async def subscribe(self, topic: str, group: str, on_payload: PayloadHandler, *, earliest: bool) -> Stop:
        t = self._topic(topic)
        backlog = list(t.retained) if earliest else []
        queue: asyncio.Queue[tuple[str, Any, bytes]] = asyncio.Queue(max(self.maxsize, len(backlog)))
        for message in backlog:
            queue.put_nowait(message)
        t.queues.append(queue)

        async def consume() -> None:
            while True:
                _key, _headers, body = await queue.get()
                on_payload(orjson.loads(body))
                queue.task_done()

        task = asyncio.create_task(consume())

        async def stop() -> None:
            t.queues.remove(queue)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return stop


# -- redis-py ------------------------------------------------------------------------------
class RedisContender(Contender):
    """redis-py on Redis Streams; ``batched`` pipelines publishes and acks per read batch."""

    def __init__(self, url: str, *, batched: bool) -> None:
        self.name = "redis-py pipelined" if batched else "redis-py"
        self.url = url
        self.batched = batched
        self.client: Any = None
        self.keys: list[str] = []

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(self.url)
        await self.client.ping()

    async def close(self) -> None:
        if self.client is not None:
            if self.keys:
                await self.client.delete(*self.keys)
            await self.client.aclose()

    @staticmethod
    def _fields(payload: dict[str, Any]) -> dict[str, Any]:
        return {"key": payload["customer_id"], **HEADERS, "value": _encode(payload)}

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.client.xadd(topic, self._fields(payload))

    async def publish_batch(self, topic: str, payloads: Sequence[dict[str, Any]]) -> None:
        if not self.batched:
            await super().publish_batch(topic, payloads)
            return
        pipe = self.client.pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(topic, self._fields(payload))
        await pipe.execute()

    async def subscribe(self, topic: str, group: str, on_payload: PayloadHandler, *, earliest: bool) -> Stop:
        import redis.asyncio as aioredis

        client = self.client
        self.keys.append(topic)
        await client.xgroup_create(topic, group, id="0" if earliest else "$", mkstream=True)
        consumer = f"c-{uuid.uuid4().hex[:8]}"
        # Its own connection: the blocking read must not hold up publishing.
        reader = aioredis.Redis.from_url(self.url)
        batched = self.batched

        running = True

        async def consume() -> None:
            while running:
                reply = await reader.xreadgroup(group, consumer, {topic: ">"}, count=100, block=100)
                for _stream, entries in reply or ():
                    ids = []
                    for entry_id, fields in entries:
                        on_payload(orjson.loads(fields[b"value"]))
                        if batched:
                            ids.append(entry_id)
                        else:
                            await reader.xack(topic, group, entry_id)
                    if ids:
                        await reader.xack(topic, group, *ids)

        task = asyncio.create_task(consume())

        async def stop() -> None:
            nonlocal running
            # redis-py may swallow a cancellation during a blocking read: end the loop instead.
            running = False
            await _finish(task)
            await reader.aclose()

        return stop


# -- aiokafka ------------------------------------------------------------------------------
class KafkaAdmin:
    """Creates the topics a Kafka contender uses up front (3 partitions, like the bus)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.client: Any = None
        self.topics: list[str] = []

    async def start(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        self.client = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self.client.start()

    async def create(self, topic: str) -> None:
        from aiokafka.admin import NewTopic

        await self.client.create_topics([NewTopic(topic, KAFKA_PARTITIONS, 1)])
        self.topics.append(topic)

    async def close(self) -> None:
        if self.client is not None:
            if self.topics:
                with contextlib.suppress(Exception):
                    await self.client.delete_topics(self.topics)
            await self.client.close()


class KafkaContender(Contender):
    """aiokafka producer and consumer, committing after handling each fetched batch."""

    def __init__(self, bootstrap: str) -> None:
        self.name = "aiokafka"
        self.bootstrap = bootstrap
        self.admin = KafkaAdmin(bootstrap)
        self.producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        await self.admin.start()
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False
        )
        await self.producer.start()

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        await self.admin.close()

    async def prepare(self, topic: str) -> None:
        await self.admin.create(topic)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.producer.send_and_wait(
            topic, _encode(payload), key=payload["customer_id"].encode(), headers=KAFKA_HEADERS
        )

    async def publish_batch(self, topic: str, payloads: Sequence[dict[str, Any]]) -> None:
        send = self.producer.send
        futures = [
            await send(topic, _encode(p), key=p["customer_id"].encode(), headers=KAFKA_HEADERS)
            for p in payloads
        ]
        await asyncio.gather(*futures)

    async def subscribe(self, topic: str, group: str, on_payload: PayloadHandler, *, earliest: bool) -> Stop:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if earliest else "latest",
            **KAFKA_CONSUMER,
        )
        await consumer.start()

        running = True

        async def consume() -> None:
            while running:
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                offsets: dict[TopicPartition, int] = {}
                for tp, records in batches.items():
                    for record in records:
                        on_payload(orjson.loads(record.value))
                    offsets[tp] = records[-1].offset + 1
                if offsets:
                    await consumer.commit(offsets)

        task = asyncio.create_task(consume())

        async def stop() -> None:
            nonlocal running
            running = False
            await _finish(task)
            await consumer.stop()

        return stop


# -- this bus on Kafka ---------------------------------------------------------------------
class BusKafkaContender(BusContender):
    """The bus on Kafka, with its topics created up front like the other Kafka contenders."""

    def __init__(self, url: str, bootstrap: str, *, name: str) -> None:
        super().__init__(url, name=name)
        self.admin = KafkaAdmin(bootstrap)

    async def start(self) -> None:
        await self.admin.start()
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self.admin.close()

    async def prepare(self, topic: str) -> None:
        await self.admin.create(topic)


# -- FastStream ----------------------------------------------------------------------------
class _FastStreamBase(Contender):
    broker: Any

    async def close(self) -> None:
        await self.broker.stop()

    async def _subscribe(self, subscriber: Any, on_payload: PayloadHandler) -> Stop:
        async def handle(body: dict) -> None:  # type: ignore[type-arg]
            on_payload(body)

        subscriber(handle)
        await subscriber.start()

        async def stop() -> None:
            await subscriber.stop()

        return stop


class FastStreamRedisContender(_FastStreamBase):
    """FastStream's Redis Streams subscriber in a consumer group, acking after the handler."""

    def __init__(self, url: str) -> None:
        self.name = "FastStream Redis"
        self.url = url

    async def start(self) -> None:
        from faststream.redis import RedisBroker

        self.broker = RedisBroker(self.url, logger=None)
        await self.broker.start()

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.broker.publish(payload, stream=topic, headers=dict(HEADERS))

    async def publish_batch(self, topic: str, payloads: Sequence[dict[str, Any]]) -> None:
        pipe = self.broker._connection.pipeline(transaction=False)
        for payload in payloads:
            await self.broker.publish(payload, stream=topic, headers=dict(HEADERS), pipeline=pipe)
        await pipe.execute()

    async def subscribe(self, topic: str, group: str, on_payload: PayloadHandler, *, earliest: bool) -> Stop:
        from faststream import AckPolicy
        from faststream.redis import StreamSub

        stream = StreamSub(
            topic, group=group, consumer=f"c-{uuid.uuid4().hex[:8]}", last_id="0" if earliest else None
        )
        subscriber = self.broker.subscriber(stream=stream, ack_policy=AckPolicy.ACK, persistent=False)
        return await self._subscribe(subscriber, on_payload)


class FastStreamKafkaContender(_FastStreamBase):
    """FastStream's Kafka subscriber; ``auto_commit`` switches to aiokafka's periodic commit."""

    def __init__(self, bootstrap: str, *, auto_commit: bool = False) -> None:
        self.name = "FastStream Kafka auto-commit" if auto_commit else "FastStream Kafka"
        self.bootstrap = bootstrap
        self.auto_commit = auto_commit
        self.admin = KafkaAdmin(bootstrap)

    async def start(self) -> None:
        from faststream.kafka import KafkaBroker

        await self.admin.start()
        # publish_batch sends one record batch, which must fit max_batch_size.
        self.broker = KafkaBroker(
            self.bootstrap, acks="all", enable_idempotence=False, max_batch_size=1_048_576, logger=None
        )
        await self.broker.start()

    async def close(self) -> None:
        await super().close()
        await self.admin.close()

    async def prepare(self, topic: str) -> None:
        await self.admin.create(topic)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.broker.publish(payload, topic, key=payload["customer_id"].encode(), headers=dict(HEADERS))

    async def publish_batch(self, topic: str, payloads: Sequence[dict[str, Any]]) -> None:
        await self.broker.publish_batch(*payloads, topic=topic, headers=dict(HEADERS))

    async def subscribe(self, topic: str, group: str, on_payload: PayloadHandler, *, earliest: bool) -> Stop:
        from faststream import AckPolicy

        subscriber = self.broker.subscriber(
            topic,
            group_id=group,
            auto_offset_reset="earliest" if earliest else "latest",
            ack_policy=AckPolicy.ACK_FIRST if self.auto_commit else AckPolicy.ACK,
            persistent=False,
            **KAFKA_CONSUMER,
        )
        return await self._subscribe(subscriber, on_payload)


def quiet_logs() -> None:
    for name in ("aiokafka", "faststream", "dotmac.events", "dotmac_events_kafka", "dotmac_events_redis"):
        logging.getLogger(name).setLevel(logging.ERROR)
