"""Fault tests: dead consumers, restarted consumers, poison events, Redis restarts, trimming.

Each test reports its figures (printed, recorded as properties and listed in the
"redis fault-test figures" section at the end of the run).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis.asyncio as aioredis

from dotmac.events import ConsumerOptions, Event, EventBus, hookimpl
from dotmac.events.testing import Collector, wait_for
from dotmac_events_redis import RedisTransport
from dotmac_events_redis.testing import RedisServer

T = 20.0
# A child interpreter importing the stack under coverage on a loaded 2-core machine
# has been seen to take more than 20 s; the test goes on as soon as it says "ready".
STARTUP = 90.0
CONSUMER = Path(__file__).with_name("consumer_proc.py")


def topic() -> str:
    return f"fault.{uuid.uuid4().hex[:8]}"


class DeliveryCounts:
    """Observer: the delivery count each event was handled with."""

    def __init__(self) -> None:
        self.by_id: dict[str, int] = {}

    @hookimpl
    def dotmac_events_on_consume(self, event: Event, info: Any, outcome: str) -> None:
        if outcome == "success":
            self.by_id[event.event_id] = info.delivery_count


class ConsumerProcess:
    """``consumer_proc.py`` in a subprocess, killed for sure at the end of the test."""

    def __init__(
        self, url: str, name: str, topic: str, group: str, mode: str, record: Path, prefetch: int
    ) -> None:
        self.args = [
            str(CONSUMER),
            "--url",
            url,
            "--topic",
            topic,
            "--group",
            group,
            "--name",
            name,
            "--mode",
            mode,
            "--record",
            str(record),
            "--prefetch",
            str(prefetch),
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ConsumerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP)
        assert line == b"ready\n", f"consumer process did not start: {line!r}"
        return self

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), T)
        finally:
            await self.kill()


@pytest.fixture
async def processes() -> Any:
    started: list[ConsumerProcess] = []

    async def spawn(*args: Any, **kwargs: Any) -> ConsumerProcess:
        process = ConsumerProcess(*args, **kwargs)
        started.append(process)
        return await process.start()

    yield spawn
    for process in started:
        await process.kill()


def url_with(base: str, **options: Any) -> str:
    return f"{base}?{urlencode(options)}"


async def pending_of(raw: aioredis.Redis, key: str, group: str, consumer: str) -> int:
    for row in await raw.xinfo_consumers(key, group):
        if row["name"] == consumer:
            return int(row["pending"])
    return 0


async def wait_pending(raw: aioredis.Redis, key: str, group: str, consumer: str, n: int) -> None:
    # Another process holds the entries: poll Redis with a deadline.
    deadline = time.monotonic() + T
    while (have := await pending_of(raw, key, group, consumer)) != n:
        assert time.monotonic() < deadline, f"{consumer} holds {have} pending entries, expected {n}"
        await asyncio.sleep(0.02)


async def test_kill_9_consumer_holding_100_unacked_events(
    redis_url: str,
    prefix: str,
    buses: Callable[..., EventBus],
    raw: aioredis.Redis,
    processes: Any,
    tmp_path: Path,
    report: Any,
) -> None:
    name, group = topic(), "workers"
    key = f"{prefix}{name}"
    settings = {"min_idle_time": 1.0, "reclaim_interval": 0.1}
    victim = await processes(
        url_with(redis_url, key_prefix=prefix, **settings),
        "victim",
        name,
        group,
        "hold",
        tmp_path / "victim.log",
        100,
    )
    counts = DeliveryCounts()
    async with buses(**settings) as producer, buses(observers=(counts,), **settings) as member:
        held = [Event(topic=name, payload={"i": i}) for i in range(100)]
        await producer.publish_many(held)
        await wait_pending(raw, key, group, "victim", 100)
        survivor = Collector()
        await member.subscribe(name, survivor, group=group, name="survivor")
        # The group keeps flowing while the victim is full.
        fresh = [Event(topic=name, payload={"i": i}) for i in range(100, 120)]
        await producer.publish_many(fresh)
        await survivor.wait_unique(20, T)
        assert set(survivor.ids) == {e.event_id for e in fresh}
        killed = time.monotonic()
        await victim.kill()
        await survivor.wait_unique(120, T)
        redelivery = time.monotonic() - killed
        handled = set(survivor.ids)
        lost = sum(1 for e in held if e.event_id not in handled)
        duplicates = len(survivor.ids) - len(handled)
        await wait_for(lambda: all(e.event_id in counts.by_id for e in held), T, what="consume reports")
        counts_seen = {counts.by_id[e.event_id] for e in held}
        await wait_pending(raw, key, group, "victim", 0)
        report(
            held_by_killed_consumer=100,
            redelivered=sum(1 for e in held if e.event_id in handled),
            lost=lost,
            duplicates=duplicates,
            seconds_to_redeliver_all=round(redelivery, 2),
            min_idle_time=settings["min_idle_time"],
            delivery_counts=sorted(counts_seen),
        )
        assert lost == 0
        assert duplicates == 0
        assert counts_seen == {2}
        assert redelivery < settings["min_idle_time"] + 5.0


async def test_restarted_consumer_processes_its_pending_entries_first(
    redis_url: str,
    prefix: str,
    buses: Callable[..., EventBus],
    raw: aioredis.Redis,
    processes: Any,
    tmp_path: Path,
    report: Any,
) -> None:
    name, group, worker = topic(), "workers", "worker-1"
    key = f"{prefix}{name}"
    crashed = await processes(
        url_with(redis_url, key_prefix=prefix), worker, name, group, "hold", tmp_path / "w.log", 50
    )
    async with buses() as producer:
        old = [Event(topic=name, payload={"i": i}) for i in range(50)]
        await producer.publish_many(old)
        await wait_pending(raw, key, group, worker, 50)
        await crashed.kill()
        new = [Event(topic=name, payload={"i": i}) for i in range(50, 100)]
        await producer.publish_many(new)
        counts = DeliveryCounts()
        async with buses(observers=(counts,)) as restarted:
            seen = Collector()
            started = time.monotonic()
            await restarted.subscribe(name, seen, group=group, name=worker)
            await seen.wait_unique(100, T)
            elapsed = time.monotonic() - started
        await wait_for(lambda: len(counts.by_id) == 100, T, what="consume reports")
        order = seen.payloads("i")
        first = order[:50]
        report(
            pending_before_restart=50,
            handled_first=f"{sum(1 for i in first if i < 50)}/50",
            in_stream_order=order == list(range(100)),
            lost=100 - len(set(seen.ids)),
            duplicates=len(seen.ids) - len(set(seen.ids)),
            seconds_to_handle_100=round(elapsed, 2),
        )
        assert first == list(range(50)), "the old pending entries must come first, in order"
        assert order == list(range(100))
        assert {counts.by_id[e.event_id] for e in old} == {2}
        assert {counts.by_id[e.event_id] for e in new} == {1}


async def test_poison_event_that_crashes_the_process(
    redis_url: str,
    prefix: str,
    buses: Callable[..., EventBus],
    raw: aioredis.Redis,
    processes: Any,
    tmp_path: Path,
    report: Any,
) -> None:
    """Exactly max_deliveries attempts, one dead letter, the healthy events keep flowing."""
    name, group, worker = topic(), "workers", "poison-worker"
    max_deliveries = 3
    record = tmp_path / "poison.log"
    url = url_with(redis_url, key_prefix=prefix, max_deliveries=max_deliveries)
    healthy = [Event(topic=name, payload={"i": i}) for i in range(20)]
    poison = Event(topic=name, payload={"poison": True})
    async with buses() as producer:
        # The group exists before the events, as it would in production.
        await raw.xgroup_create(f"{prefix}{name}", group, id="$", mkstream=True)
        await producer.publish_many([*healthy[:10], poison, *healthy[10:]])
        crashes = 0
        started = time.monotonic()
        while True:
            process = await processes(url, worker, name, group, "poison", record, 100)
            waiter = asyncio.ensure_future(process.wait())
            # A restart loop like a supervisor's: each crash (exit 17) starts a new process.
            deadline = time.monotonic() + T
            while not waiter.done() and await raw.xlen(f"{prefix}{name}.dlq") == 0:
                assert time.monotonic() < deadline, "neither a crash nor a dead letter"
                await asyncio.sleep(0.02)
            if waiter.done():
                assert waiter.result() == 17
                crashes += 1
                assert crashes <= max_deliveries, "the poison event was delivered too often"
                continue
            break
        more = [Event(topic=name, payload={"i": i}) for i in range(20, 30)]
        await producer.publish_many(more)
        wanted = {e.event_id for e in [*healthy, *more]}

        def healthy_done() -> set[str]:
            lines = record.read_text().split()
            return {lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "ok"}

        deadline = time.monotonic() + T
        while not wanted <= healthy_done():
            assert time.monotonic() < deadline, (
                f"{len(healthy_done() & wanted)} of {len(wanted)} healthy handled"
            )
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        assert await process.terminate() == 0
        waiter.cancel()
        letters = await producer.dlq.list(f"{name}.dlq")
        lines = record.read_text().split()
        attempts = sum(1 for i in range(0, len(lines), 2) if lines[i] == "attempt")
        ok_ids = [lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "ok"]
        report(
            max_deliveries=max_deliveries,
            handler_attempts_on_poison=attempts,
            process_crashes=crashes,
            dead_letters=len(letters),
            dlq_reason=letters[0].reason if letters else None,
            healthy_handled=f"{len(set(ok_ids) & wanted)}/{len(wanted)}",
            healthy_dead_lettered=sum(1 for dl in letters if dl.event_id in wanted),
            healthy_duplicates=len(ok_ids) - len(set(ok_ids)),
            seconds=round(elapsed, 2),
        )
        assert attempts == max_deliveries
        assert crashes == max_deliveries
        assert [dl.event_id for dl in letters] == [poison.event_id]
        assert letters[0].reason == "max_deliveries"
        assert letters[0].event is not None and letters[0].event.payload == {"poison": True}
        assert set(ok_ids) == wanted


@pytest.mark.parametrize(
    ("appendfsync", "how"),
    [("everysec", "graceful restart"), ("always", "kill -9")],
)
async def test_redis_restart_during_consumption_of_10000_events(
    private_server: Callable[..., RedisServer],
    buses: Callable[..., EventBus],
    report: Any,
    appendfsync: str,
    how: str,
) -> None:
    server = private_server(appendonly=True, appendfsync=appendfsync)
    name, total = topic(), 10_000
    settings = {"reconnect_backoff_max": 0.3, "max_stream_length": None}
    events = [Event(topic=name, payload={"i": i}) for i in range(total)]
    async with buses(server.url, **settings) as producer, buses(server.url, **settings) as consumer:
        transport = consumer.transport
        assert isinstance(transport, RedisTransport)
        seen = Collector()
        sub = await consumer.subscribe(name, seen, group="g", options=ConsumerOptions(concurrency=4))
        for start in range(0, total // 2, 500):
            await producer.publish_many(events[start : start + 500])

        async def publish_rest() -> None:
            for start in range(total // 2, total, 250):
                await producer.publish_many(events[start : start + 250])

        publisher = asyncio.create_task(publish_rest())
        await seen.wait(lambda c: len(c.events) >= 3000, T, "3000 events before the restart")
        down = time.monotonic()
        handled_before = len(seen.events)
        await asyncio.to_thread(server.restart, crash=(how == "kill -9"))
        up = time.monotonic()
        # The subscription counts a reconnect when its first read after the failure succeeds.
        await wait_for(lambda: transport.counters["reconnects"] >= 1, T, what="the subscription to resume")
        resumed = time.monotonic()
        await asyncio.wait_for(publisher, T)
        await seen.wait_unique(total, 60.0)
        unique = set(seen.ids)
        lost = sum(1 for e in events if e.event_id not in unique)
        duplicates = len(seen.ids) - len(unique)
        report(
            persistence=f"appendonly yes, appendfsync {appendfsync}",
            restart=how,
            events=total,
            handled_before_restart=handled_before,
            redis_down_seconds=round(up - down, 2),
            subscription_resumed_seconds_after_redis=round(resumed - up, 2),
            lost=lost,
            duplicates=duplicates,
            subscription_errors=sub.errors,
            reconnects=transport.counters["reconnects"],
        )
        assert lost == 0


@pytest.mark.parametrize("policy", ["safe", "maxlen"])
async def test_trimming_under_a_pending_backlog(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str, report: Any, policy: str
) -> None:
    name, cap, total = topic(), 100, 1000
    key = f"{prefix}{name}"
    gate = asyncio.Event()

    async def slow(event: Event) -> None:
        await gate.wait()

    async with buses(max_stream_length=cap, trim_policy=policy) as bus:
        transport = bus.transport
        assert isinstance(transport, RedisTransport)
        seen = Collector(on_event=slow)
        sub = await bus.subscribe(name, seen, group="g", options=ConsumerOptions(prefetch_count=50))
        events = [Event(topic=name, payload={"i": i}) for i in range(total)]
        longest = 0
        for start in range(0, total, 50):
            await bus.publish_many(events[start : start + 50])
            longest = max(longest, await raw.xlen(key))
        pending = (await raw.xpending(key, "g"))["pending"]
        stats_during = transport.stats()
        gate.set()
        if policy == "safe":
            await seen.wait_unique(total, T)
            await wait_for(lambda: sub.handled >= total, T, what="every ack")
            handled = len(set(seen.ids))
            # Everything is acknowledged now: the next publish trims to the cap.
            await bus.publish(Event(topic=name, payload={"i": total}))
            await seen.wait_unique(total + 1, T)
            after = await raw.xlen(key)
            report(
                policy=policy,
                max_stream_length=cap,
                published=total,
                pending_while_stuck=pending,
                longest_stream=longest,
                kept_over_cap=stats_during["over_limit"].get(key),
                trim_deferred=stats_during["trim_deferred"],
                trimmed_unread=stats_during["trimmed_unread"],
                handled=handled,
                lost=total - handled,
                length_after_catch_up=after,
            )
            assert handled == total
            assert stats_during["trimmed_unread"] == 0
            assert stats_during["trim_deferred"] > 0
            assert stats_during["over_limit"][key] == longest - cap
            assert after <= cap + max(1, cap // 100)
        else:
            unread = stats_during["trimmed_unread"]
            await seen.wait_unique(total - unread, T)
            handled = len(set(seen.ids))
            report(
                policy=policy,
                max_stream_length=cap,
                published=total,
                longest_stream=longest,
                trimmed=stats_during["trimmed"],
                trimmed_unread=unread,
                trimmed_unacknowledged=stats_during["trimmed_unacknowledged"],
                handled=handled,
                handled_plus_trimmed_unread=handled + unread,
            )
            assert longest <= cap + max(1, cap // 100) + 50
            assert unread > 0
            # Every event was either handled or counted as trimmed unread.
            assert handled + unread == total
