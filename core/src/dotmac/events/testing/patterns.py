"""Delivery patterns as executable tests: non-blocking retries, delayed delivery,
targeted dead-letter replay, batch consume.

Part of :class:`~dotmac.events.testing.TransportConformance`. Each case prints its
figures (``lost``, ``duplicates``, timings) so a run shows them with ``pytest -s``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from ..bus import EventBus
from ..errors import NonRetryableError
from ..event import Event
from ..options import ConsumerOptions, retry_topic
from .collect import Collector

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
