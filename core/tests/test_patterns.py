"""Edges of the delivery patterns on memory://: retry topics, delayed delivery, replay, batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from dotmac.events import (
    ConfigurationError,
    ConsumerOptions,
    Event,
    ValidationError,
    create_bus,
    hookimpl,
)
from dotmac.events.delay import BUCKETS, delay_topic, schedule
from dotmac.events.retry import set_testing
from dotmac.events.testing import Collector, wait_for
from dotmac.events.transport import Message

T = 5.0


def test_retry_topics_take_a_list_and_refuse_bad_delays() -> None:
    assert ConsumerOptions(retry_topics=[1, 2.5]).retry_topics == (1, 2.5)
    for bad in ((-1,), ("1",), (True,), (float("nan"),), 5):
        with pytest.raises(ConfigurationError, match="retry_topics"):
            ConsumerOptions(retry_topics=bad)  # type: ignore[arg-type]


def test_schedule_picks_the_shortest_bucket_that_covers_the_wait() -> None:
    now = 1_000_000.0
    assert schedule("t", b"", None, {}, now + 0.1, now=now).topic == delay_topic(0.25)
    assert schedule("t", b"", None, {}, now + 3, now=now).topic == delay_topic(4)
    far = schedule("t", b"", None, {"x-deliver-to": "old"}, now + 10 * BUCKETS[-1], now=now)
    assert far.topic == delay_topic(BUCKETS[-1])
    assert far.headers["x-deliver-to"] == "t"


async def test_bad_pattern_arguments_fail_before_anything_runs(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        with pytest.raises(ValidationError):
            await bus.subscribe("t" * 245, Collector(), group="g", options=ConsumerOptions(retry_topics=(1,)))
        with pytest.raises(ConfigurationError, match="consumer group"):
            await bus.subscribe("t", Collector(), options=ConsumerOptions(retry_topics=(1,)))
        for kwargs in ({"max_size": 0}, {"max_wait_ms": -1}, {"max_size": True}):
            with pytest.raises(ConfigurationError):
                await bus.subscribe_batch("t", Collector(), **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="concurrency"):
            await bus.subscribe_batch("t", Collector(), options=ConsumerOptions(concurrency=2))
        with pytest.raises(ConfigurationError, match="retry_topics"):
            await bus.subscribe_batch("t", Collector(), options=ConsumerOptions(retry_topics=(1,)))
        assert bus.subscriptions == ()


async def test_a_stop_releases_a_held_retry_and_the_next_member_gets_it(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        failing = Collector(fail=lambda _e, _n: RuntimeError("down"))
        options = ConsumerOptions(retry_topics=(0.5,))
        first = await bus.subscribe("orders", failing, group="g", options=options)
        await bus.publish(Event(topic="orders", payload={"i": 1}))
        stage = first.retry_subscriptions[0]
        await wait_for(lambda: stage._window.held == 1, T, what="a held retry")
        await first.stop()
        assert stage.released == 1
        healthy = Collector()
        await bus.subscribe("orders", healthy, group="g", options=options)
        await healthy.wait_count(1, T)
        assert failing.total_calls == 1
        assert healthy.events[0].headers["x-retry-attempts"] == "1"


async def test_a_delay_topic_message_without_scheduling_headers_is_dead_lettered(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        dead = Collector()
        await bus.subscribe(f"{delay_topic(1)}.dlq", dead)
        scheduler = await bus.start_delay_scheduler()
        await bus.transport.publish([Message(topic=delay_topic(1), value=b"{}", headers={"ce_id": "x"})])
        await dead.wait_count(1, T)
        assert dead.events[0].headers["x-dlq-reason"] == "decode"
        assert scheduler.forwarded == 0


async def test_a_past_deliver_at_publishes_at_once(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        seen = Collector()
        await bus.subscribe("now", seen)
        past = datetime.now(timezone.utc) - timedelta(seconds=5)
        await bus.publish(Event(topic="now", payload={}), deliver_at=past)
        await seen.wait_count(1, T)  # no scheduler is running


async def test_a_batch_with_an_undecodable_message_handles_the_rest(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        got: list[int] = []

        async def handle(events: list[Event]) -> None:
            got.extend(e.payload["i"] for e in events)

        sub = await bus.subscribe_batch("b", handle, max_size=5, max_wait_ms=50)
        await bus.publish(Event(topic="b", payload={"i": 0}))
        await bus.transport.publish([Message(topic="b", value=b"not json", headers={"ce_id": "bad"})])
        await bus.publish_many([Event(topic="b", payload={"i": i}) for i in (1, 2)])
        await wait_for(lambda: len(got) == 3, T, what="3 events")
        await wait_for(lambda: sub.dead_lettered == 1, T, what="a dead letter")
        assert got == [0, 1, 2]
        (letter,) = await bus.dlq.list("b.dlq")
        assert letter.reason == "decode"


async def test_a_batch_stopped_during_its_retry_wait_is_released(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        calls = {"n": 0}
        set_testing(False)  # the retry wait is what this test stops in

        async def handle(_events: list[Event]) -> None:
            calls["n"] += 1
            raise RuntimeError("down")

        options = ConsumerOptions(max_retries=3, retry_policy="fixed", backoff_base_ms=60_000)
        sub = await bus.subscribe_batch("s", handle, group="g", max_size=3, max_wait_ms=10, options=options)
        await bus.publish_many([Event(topic="s", payload={"i": i}) for i in range(3)])
        await wait_for(lambda: calls["n"] == 1, T, what="the first call")
        await sub.stop(1.0)
        assert sub.released == 3
        assert sub.dead_lettered == 0


async def test_replay_to_all_groups_and_again_after_a_new_failure(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        broken = {"on": True}
        a = Collector(fail=lambda _e, _n: RuntimeError("down") if broken["on"] else None)
        b = Collector()
        sub_a = await bus.subscribe("r", a, group="a", options=ConsumerOptions(max_retries=0))
        await bus.subscribe("r", b, group="b")
        await bus.publish(Event(topic="r", payload={}))
        await wait_for(lambda: sub_a.dead_lettered == 1, T, what="a dead letter")
        # Replayed, it fails again: the new dead letter is replayable, its count grows.
        assert await bus.dlq.replay("r.dlq") == 1
        await wait_for(lambda: sub_a.dead_lettered == 2, T, what="a second dead letter")
        letters = await bus.dlq.list("r.dlq")
        assert letters[1].message.headers["x-replay-count"] == "1"
        assert "x-replay-group" not in letters[1].message.headers
        broken["on"] = False
        assert await bus.dlq.replay("r.dlq", all_groups=True) == 1
        await a.wait_count(1, T)
        await b.wait_count(2, T)
        assert a.events[0].headers["x-replay-count"] == "2"
        assert await bus.dlq.replay("r.dlq") == 0
        with pytest.raises(ValidationError):
            await bus.dlq.replay("r.dlq", since=datetime(2020, 1, 1))  # noqa: DTZ001
        await asyncio.sleep(0)


def test_the_delay_scheduler_command_runs_and_reports() -> None:
    pytest.importorskip("dotmac_events_memory")
    import io
    import json

    from dotmac.events.cli import main

    out = io.StringIO()
    assert main(["delay-scheduler", "--url", "memory://cli-delay", "--seconds", "0.2"], out=out) == 0
    started, stopped = (json.loads(line) for line in out.getvalue().splitlines())
    assert started == {"scheduler": "started", "topics": [delay_topic(b) for b in BUCKETS]}
    assert stopped == {"scheduler": "stopped", "forwarded": 0}


async def test_a_batch_waiting_to_fill_is_released_on_stop(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        got: list[Event] = []

        async def handle(events: list[Event]) -> None:
            got.extend(events)

        sub = await bus.subscribe_batch("w", handle, group="g", max_size=100, max_wait_ms=60_000)
        await bus.publish_many([Event(topic="w", payload={"i": i}) for i in range(3)])
        await wait_for(lambda: sub._window.held == 3, T, what="3 queued events")
        await asyncio.wait_for(sub.stop(1.0), T)
        assert sub.released == 3
        assert got == []


async def test_a_batch_subscription_holds_at_most_its_window(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        gate = asyncio.Event()
        sizes: list[int] = []

        async def handle(events: list[Event]) -> None:
            sizes.append(len(events))
            await gate.wait()

        options = ConsumerOptions(prefetch_count=5)
        sub = await bus.subscribe_batch("p", handle, group="g", max_size=3, max_wait_ms=10, options=options)
        await bus.publish_many([Event(topic="p", payload={"i": i}) for i in range(50)])
        await wait_for(lambda: sub._window.held == 5, T, what="a full window")
        await asyncio.sleep(0.05)  # time for the transport to overfill, if it could
        assert sub._window.held == 5
        assert sizes == [3]
        gate.set()
        await wait_for(lambda: sub.handled == 50, T, what="all handled")
        assert max(sizes) == 3


async def test_retry_headers_on_an_ordinary_topic_are_not_trusted(memory_url: str) -> None:
    # An event forwarded with the headers of an earlier life keeps its own topic
    # and its own attempt count in the dead letter.
    async with create_bus(memory_url) as bus:
        failing = Collector(fail=lambda _e, _n: RuntimeError("down"))
        sub = await bus.subscribe("plain", failing, group="g", options=ConsumerOptions(max_retries=0))
        forwarded = {"x-retry-original-topic": "elsewhere", "x-retry-attempts": "7"}
        await bus.publish(Event(topic="plain", payload={}, headers=forwarded))
        await wait_for(lambda: sub.dead_lettered == 1, T, what="a dead letter")
        (letter,) = await bus.dlq.list("plain.dlq")
        assert letter.original_topic == "plain"
        assert letter.attempts == 1


class _Tracer:
    """Adds a header on publish (as a tracing observer does) and records outcomes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    @hookimpl
    def dotmac_events_publish_context(self, event: Event) -> Any:
        @contextlib.contextmanager
        def inject() -> Iterator[dict[str, str]]:
            yield {"traceparent": f"trace-{event.payload['i']}"}

        return inject()

    @hookimpl
    def dotmac_events_on_publish(self, event: Event, outcome: str) -> None:
        self.published.append((event.topic, outcome))


async def test_a_delayed_publish_goes_through_publish_observers(memory_url: str) -> None:
    tracer = _Tracer()
    async with create_bus(memory_url, observers=[tracer]) as bus:
        seen = Collector()
        await bus.subscribe("traced", seen, group="g")
        await bus.start_delay_scheduler()
        await bus.publish(Event(topic="traced", payload={"i": 1}), delay=0.05)
        await seen.wait_count(1, T)
        assert seen.events[0].headers["traceparent"] == "trace-1"
        assert ("traced", "success") in tracer.published
