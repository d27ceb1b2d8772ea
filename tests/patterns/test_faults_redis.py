"""Fault tests of the delivery patterns on Redis: a consumer process killed with
SIGKILL while it holds delayed events, events waiting on a retry topic, or a batch.

Each test prints its figures (lost, duplicates, seconds to recover).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.delay import delay_topic
from dotmac.events.options import retry_topic
from dotmac.events.testing import Collector

pytest.importorskip("dotmac_events_redis")

import redis.asyncio as aioredis  # noqa: E402

from dotmac_events_redis.testing import RedisServer  # noqa: E402

T = 20.0
# A killed consumer's entries go to a live member after one idle second.
FAST = "min_idle_time=1.0&reclaim_interval=0.1"


@pytest.fixture
def url(server: RedisServer) -> str:
    return f"{server.url}?key_prefix=faults:{uuid.uuid4().hex[:8]}:&{FAST}"


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.aclose()


async def pending(raw: aioredis.Redis, key: str) -> int:
    try:
        groups = await raw.xinfo_groups(key)
    except aioredis.ResponseError:  # the stream does not exist yet
        return 0
    return sum(int(g["pending"]) for g in groups)


async def wait_pending(raw: aioredis.Redis, key: str, n: int) -> None:
    # Another process holds the entries: poll Redis with a deadline.
    deadline = time.monotonic() + T
    while (have := await pending(raw, key)) < n:
        assert time.monotonic() < deadline, f"{key} has {have} pending entries, expected {n}"
        await asyncio.sleep(0.02)


def prefix_of(url: str) -> str:
    return url.split("key_prefix=", 1)[1].split("&", 1)[0]


async def test_kill_9_scheduler_holding_delayed_events(url: str, raw: aioredis.Redis, children: Any) -> None:
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    n = 100
    victim = await children("--url", url, "--mode", "scheduler")
    async with create_bus(url) as bus:
        arrived: dict[int, float] = {}
        seen = Collector(on_event=lambda e: arrived.setdefault(e.payload["i"], time.time()))
        await bus.subscribe(topic, seen, group="orders")
        due: dict[int, float] = {}
        for i in range(n):
            due[i] = time.time() + 2.0
            await bus.publish(Event(topic=topic, payload={"i": i}), delay=2.0)
        # Every event sits in the 4 s bucket (the shortest covering 2 s), held
        # un-acked by the victim.
        await wait_pending(raw, f"{prefix_of(url)}{delay_topic(4)}", n)
        killed = time.monotonic()
        await victim.kill()
        await bus.start_delay_scheduler()
        await seen.wait(lambda _c: len(arrived) >= n, T)
        recovered = time.monotonic() - killed
        early = [i for i in range(n) if arrived[i] < due[i] - 0.002]
        duplicates = len(seen.events) - len(arrived)
        print(
            f"\nscheduler kill -9 holding {n} delayed events: lost={n - len(arrived)} "
            f"duplicates={duplicates} early={len(early)} all delivered {recovered:.2f}s after the kill"
        )
        assert not early
        assert len(arrived) == n


async def test_kill_9_consumer_holding_retry_topic_events(
    url: str, raw: aioredis.Redis, children: Any
) -> None:
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    n = 50
    victim = await children(
        "--url", url, "--mode", "retry", "--topic", topic, "--group", "billing", "--delay", "3"
    )
    async with create_bus(url) as bus:
        started = time.time()
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(n)])
        # The victim failed each once and now holds them on <topic>.retry.1 for 3 s.
        await wait_pending(raw, f"{prefix_of(url)}{retry_topic(topic, 1)}", n)
        killed = time.monotonic()
        await victim.kill()
        handled_at: dict[int, float] = {}
        seen = Collector(on_event=lambda e: handled_at.setdefault(e.payload["i"], time.time()))
        await bus.subscribe(topic, seen, group="billing", options=ConsumerOptions(retry_topics=(3.0,)))
        await seen.wait(lambda _c: len(handled_at) >= n, T)
        recovered = time.monotonic() - killed
        early = [i for i, at in handled_at.items() if at < started + 3.0]
        duplicates = len(seen.events) - len(handled_at)
        print(
            f"\nconsumer kill -9 holding {n} events on a retry topic: lost={n - len(handled_at)} "
            f"duplicates={duplicates} early={len(early)} all handled {recovered:.2f}s after the kill"
        )
        assert not early
        assert all(e.headers["x-retry-attempts"] == "1" for e in seen.events)


async def test_kill_9_batch_consumer_mid_batch(url: str, raw: aioredis.Redis, children: Any) -> None:
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    n = 50
    victim = await children("--url", url, "--mode", "batch", "--topic", topic, "--group", "billing")
    async with create_bus(url) as bus:
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(n)])
        await wait_pending(raw, f"{prefix_of(url)}{topic}", n)
        killed = time.monotonic()
        await victim.kill()
        handled: list[int] = []

        async def handle(events: list[Event]) -> None:
            handled.extend(e.payload["i"] for e in events)

        await bus.subscribe_batch(topic, handle, group="billing", max_size=20, max_wait_ms=50)
        deadline = time.monotonic() + T
        while len(set(handled)) < n:
            assert time.monotonic() < deadline, f"{len(set(handled))} of {n} handled"
            await asyncio.sleep(0.02)
        recovered = time.monotonic() - killed
        duplicates = len(handled) - len(set(handled))
        print(
            f"\nbatch consumer kill -9 mid-batch holding {n}: lost={n - len(set(handled))} "
            f"duplicates={duplicates} all handled {recovered:.2f}s after the kill"
        )
        assert sorted(set(handled)) == list(range(n))
