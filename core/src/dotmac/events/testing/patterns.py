"""Delivery patterns as executable tests: non-blocking retries, delayed delivery,
targeted dead-letter replay, batch consume.

Part of :class:`~dotmac.events.testing.TransportConformance`. Each case prints its
figures (``lost``, ``duplicates``, timings) so a run shows them with ``pytest -s``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta, timezone

import pytest

from ..bus import EventBus
from ..errors import NonRetryableError, ValidationError
from ..event import Event
from ..options import ConsumerOptions, retry_topic
from .collect import Collector, wait_for

__all__ = ["PatternConformance"]


class PatternConformance:
    """Pattern cases; the host class provides buses, topics and ``run``."""

    timeout: float
    run: Callable[[Callable[[], Awaitable[None]]], None]
    buses: Callable[[int], AbstractAsyncContextManager[list[EventBus]]]
    topic: Callable[[str], str]
    group: Callable[[str], str]
    event: Callable[..., Event]
    require: Callable[..., None]

    def test_retry_topics_do_not_block_the_lane(self) -> None:
        """A failing event moves through ``<topic>.retry.<n>`` while the events behind
        it are handled; it ends in the DLQ with the original topic and all calls."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("retry-topics")
                group = self.group("retry")
                delays = (0.3, 0.6)
                calls_at: dict[int, list[float]] = {}

                def fail(event: Event, _count: int) -> BaseException | None:
                    calls_at.setdefault(event.payload["i"], []).append(time.monotonic())
                    if event.payload["i"] == 0:
                        return ValueError("always fails")
                    if event.payload["i"] == 1 and len(calls_at[1]) == 1:
                        return ValueError("fails once")
                    return None

                seen = Collector(fail=fail)
                dead = Collector()
                sub = await consumer.subscribe(
                    topic, seen, group=group, options=ConsumerOptions(retry_topics=delays)
                )
                assert [s.topics for s in sub.retry_subscriptions] == [
                    (retry_topic(topic, 1),),
                    (retry_topic(topic, 2),),
                ]
                await consumer.subscribe(f"{topic}.dlq", dead, group=self.group("dlq"))
                started = time.monotonic()
                await producer.publish_many([self.event(topic, i, key=str(i)) for i in range(20)])
                # Events 2..19 are handled while 0 and 1 wait on the retry topics.
                await seen.wait(lambda c: {2, 19} <= set(c.payloads("i")), self.timeout)
                behind = time.monotonic() - started
                await dead.wait_count(1, self.timeout)
                await seen.wait(lambda c: 1 in c.payloads("i"), self.timeout)
                letter = dead.events[0]
                assert letter.payload["i"] == 0
                assert letter.headers["x-dlq-original-topic"] == topic
                assert letter.headers["x-dlq-consumer-group"] == group
                assert letter.headers["x-dlq-attempts"] == "3"
                assert letter.headers["x-retry-first-error-type"] == "ValueError"
                assert letter.headers["x-retry-original-topic"] == topic
                assert "x-hold-until" not in letter.headers
                # Each retry waited at least its topic's delay.
                gaps = [b - a for a, b in zip(calls_at[0], calls_at[0][1:], strict=False)]
                assert len(gaps) == 2
                assert gaps[0] >= delays[0] - 0.01, gaps
                assert gaps[1] >= delays[1] - 0.01, gaps
                assert calls_at[1][1] - calls_at[1][0] >= delays[0] - 0.01
                handled = set(seen.payloads("i"))
                lost = set(range(1, 20)) - handled
                duplicates = len(seen.events) - len(handled)
                print(
                    f"\nretry topics: lost={len(lost)} duplicates={duplicates} "
                    f"healthy events done in {behind:.3f}s, retry gaps "
                    + ", ".join(f"{g:.3f}s" for g in gaps)
                )
                assert not lost
                assert len(calls_at[0]) == 3

        self.run(scenario)

    def test_retry_topics_non_retryable_goes_to_dlq_at_once(self) -> None:
        """``NonRetryableError`` skips the retry topics."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(1) as (bus,):
                topic = self.topic("retry-nonretryable")
                seen = Collector(fail=lambda _e, _n: NonRetryableError("no"))
                dead = Collector()
                await bus.subscribe(
                    topic, seen, group=self.group("nr"), options=ConsumerOptions(retry_topics=(5.0,))
                )
                await bus.subscribe(f"{topic}.dlq", dead)
                await bus.publish(self.event(topic, 1))
                await dead.wait_count(1, self.timeout)
                assert seen.total_calls == 1
                assert dead.events[0].headers["x-dlq-reason"] == "non_retryable"

        self.run(scenario)

    # -- delayed delivery ------------------------------------------------------------------
    delayed_events: int = 300

    def test_delayed_delivery_is_never_early(self) -> None:
        """Events published with ``delay``/``deliver_at`` arrive no earlier than asked;
        prints lateness p50/p99."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("delayed")
                arrived: dict[int, float] = {}

                async def record(event: Event) -> None:
                    arrived.setdefault(event.payload["i"], time.time())

                seen = Collector(on_event=record)
                await consumer.subscribe(topic, seen, group=self.group("delayed"))
                await consumer.start_delay_scheduler()
                n = self.delayed_events
                due: dict[int, float] = {}
                started = time.time()
                for i in range(n):
                    wait = 0.2 + (i * 7919 % 1000) / 1000  # spread over 0.2 .. 1.2 s
                    if i % 2:
                        at = datetime.fromtimestamp(time.time() + wait, timezone.utc)
                        due[i] = at.timestamp()
                        await producer.publish(self.event(topic, i), deliver_at=at)
                    else:
                        due[i] = time.time() + wait
                        await producer.publish(self.event(topic, i), delay=wait)
                published = time.time() - started
                await seen.wait(lambda _c: len(arrived) >= n, self.timeout + 5)
                early = [i for i in range(n) if arrived[i] < due[i] - 0.002]
                late = sorted(arrived[i] - due[i] for i in range(n))
                p50, p99 = late[len(late) // 2], late[min(len(late) - 1, int(len(late) * 0.99))]
                duplicates = len(seen.events) - len(arrived)
                print(
                    f"\ndelayed delivery: n={n} lost=0 duplicates={duplicates} early={len(early)} "
                    f"lateness p50={p50 * 1000:.1f}ms p99={p99 * 1000:.1f}ms max={late[-1] * 1000:.1f}ms "
                    f"published in {published:.2f}s"
                )
                assert not early, early[:5]

        self.run(scenario)

    def test_delayed_delivery_survives_a_scheduler_restart(self) -> None:
        """A delayed event held by a scheduler that stops is delivered by the next one."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("delayed-restart")
                seen = Collector()
                await consumer.subscribe(topic, seen, group=self.group("restart"))
                first = self.create_bus()  # type: ignore[attr-defined]
                async with first:
                    scheduler = await first.start_delay_scheduler()
                    due = time.time() + 1.5
                    await producer.publish(self.event(topic, 1), delay=1.5)
                    await wait_for(
                        lambda: any(s._window.held for s in scheduler.stages),
                        self.timeout,
                        what="a held event",
                    )
                # The first scheduler is gone; a new one takes over.
                await producer.start_delay_scheduler()
                await seen.wait_count(1, self.timeout + 5)
                arrived = time.time()
                assert arrived >= due - 0.002
                print(f"\ndelayed across a scheduler restart: lost=0 late by {(arrived - due) * 1000:.0f}ms")

        self.run(scenario)

    def test_delayed_publish_rejects_bad_input(self) -> None:
        """A naive datetime, a negative delay or both arguments fail before sending."""

        async def scenario() -> None:
            async with self.buses(1) as (bus,):
                topic = self.topic("delayed-bad")
                event = self.event(topic, 1)
                with pytest.raises(ValidationError):
                    await bus.publish(event, deliver_at=datetime(2030, 1, 1))
                with pytest.raises(ValidationError):
                    await bus.publish(event, delay=-1)
                with pytest.raises(ValidationError):
                    await bus.publish(event, delay=1, deliver_at=datetime.now(timezone.utc))
                with pytest.raises(ValidationError):
                    await bus.publish(event, delay=float("nan"))

        self.run(scenario)

    # -- targeted replay -------------------------------------------------------------------
    def test_dlq_replay_reaches_only_the_failed_group_once(self) -> None:
        """Replay goes to the group that failed (others ack it unhandled), is marked
        with ``x-replay-count``, honours filters and dry runs, and is not sent twice."""
        self.require(consumer_groups=True, readable=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("replay-target")
                dlq = f"{topic}.dlq"
                broken = {"on": True}
                failing = Collector(
                    fail=lambda e, _n: RuntimeError("down") if broken["on"] and e.payload["i"] < 2 else None
                )
                healthy = Collector()
                billing = self.group("billing")
                sub_a = await consumer.subscribe(
                    topic, failing, group=billing, options=ConsumerOptions(max_retries=0)
                )
                sub_b = await consumer.subscribe(topic, healthy, group=self.group("shipping"))
                sent = [self.event(topic, i) for i in range(5)]
                await producer.publish_many(sent)
                await healthy.wait_count(5, self.timeout)
                await wait_for(lambda: sub_a.dead_lettered == 2, self.timeout, what="2 dead letters")
                assert await producer.dlq.replay(dlq, dry_run=True) == 2
                assert await producer.dlq.replay(dlq, error_type="KeyError", dry_run=True) == 0
                later = datetime.now(timezone.utc) + timedelta(hours=1)
                assert await producer.dlq.replay(dlq, since=later, dry_run=True) == 0
                one = await producer.dlq.select(dlq, event_ids=[sent[1].event_id])
                assert [dl.event_id for dl in one] == [sent[1].event_id]
                broken["on"] = False
                assert await producer.dlq.replay(dlq) == 2
                await failing.wait_count(5, self.timeout)
                await wait_for(lambda: sub_b.skipped == 2, self.timeout, what="the other group skipping")
                replayed = [e for e in failing.events if e.payload["i"] < 2]
                assert {e.event_id for e in replayed} == {sent[0].event_id, sent[1].event_id}
                assert all(e.headers["x-replay-count"] == "1" for e in replayed)
                assert all(e.headers["x-replay-group"] == billing for e in replayed)
                assert healthy.total_calls == 5  # the other group never saw the replay
                # A second replay finds everything in the ledger.
                assert await producer.dlq.replay(dlq) == 0
                assert await producer.dlq.replay(dlq, force=True, dry_run=True) == 2
                handled = {e.event_id for e in failing.events}
                lost = {e.event_id for e in sent} - handled
                duplicates = len(failing.events) - len(handled)
                print(
                    f"\ntargeted replay: lost={len(lost)} duplicates={duplicates} "
                    f"other group handler calls={healthy.total_calls - 5} skipped={sub_b.skipped} "
                    f"second replay sent=0"
                )
                assert not lost

        self.run(scenario)

    # -- batch consume ---------------------------------------------------------------------
    def test_batch_consume_bisects_to_the_poison_events(self) -> None:
        """A failing batch is retried, then bisected: healthy events are handled once,
        in order, and only the poison events are dead-lettered."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("batch-poison")
                poison = {5, 13}
                handled: list[int] = []
                sizes: list[int] = []
                calls = {"n": 0}

                async def handle(events: list[Event]) -> None:
                    calls["n"] += 1
                    sizes.append(len(events))
                    if poison & {e.payload["i"] for e in events}:
                        raise ValueError("poison in the batch")
                    handled.extend(e.payload["i"] for e in events)

                dead = Collector()
                await consumer.subscribe(f"{topic}.dlq", dead)
                sub = await consumer.subscribe_batch(
                    topic,
                    handle,
                    group=self.group("batch"),
                    max_size=10,
                    max_wait_ms=200,
                    options=ConsumerOptions(max_retries=1, retry_policy="fixed", backoff_base_ms=0),
                )
                n = 20
                await producer.publish_many([self.event(topic, i, key="one-key") for i in range(n)])
                await dead.wait_count(2, self.timeout)
                await wait_for(lambda: len(handled) >= n - 2, self.timeout, what="healthy events")
                assert sorted(e.payload["i"] for e in dead.events) == sorted(poison)
                assert all(e.headers["x-dlq-original-topic"] == topic for e in dead.events)
                assert handled == [i for i in range(n) if i not in poison]  # once each, in order
                assert max(sizes) <= 10
                lost = set(range(n)) - poison - set(handled)
                print(
                    f"\nbatch consume: lost={len(lost)} duplicates={len(handled) - len(set(handled))} "
                    f"dead-lettered={len(dead.events)} handler calls={calls['n']} "
                    f"bisections={sub.bisections} batches ok={sub.batches}"
                )
                assert not lost

        self.run(scenario)

    def test_batch_consume_flushes_after_max_wait(self) -> None:
        """A lone event is handed over after ``max_wait_ms``; a backlog in lists of at
        most ``max_size``."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("batch-wait")
                sizes: list[int] = []
                seen: list[int] = []

                def handle(events: list[Event]) -> None:  # a sync handler runs in a thread
                    sizes.append(len(events))
                    seen.extend(e.payload["i"] for e in events)

                await consumer.subscribe_batch(topic, handle, max_size=7, max_wait_ms=100)
                started = time.monotonic()
                await producer.publish(self.event(topic, 0))
                await wait_for(lambda: seen == [0], self.timeout, what="the lone event")
                waited = time.monotonic() - started
                await producer.publish_many([self.event(topic, i, key="k") for i in range(1, 31)])
                await wait_for(lambda: len(seen) >= 31, self.timeout, what="the backlog")
                assert sorted(seen) == list(range(31))
                assert max(sizes) <= 7
                assert waited >= 0.09
                print(f"\nbatch max_wait: lone event after {waited * 1000:.0f}ms, sizes {sizes}")

        self.run(scenario)
