"""The transport conformance kit: the delivery semantics of docs/delivery.md as executable tests.

Subclass :class:`TransportConformance` (its name does not start with ``Test``, so
pytest only collects your subclass) and implement :meth:`create_bus`. Capability
flags of the transport (``bus.capabilities``) skip what it cannot do. Override
:meth:`payload` if your codec needs a particular payload shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from ..bus import EventBus
from ..errors import (
    BusStateError,
    EncodeError,
    NonRetryableError,
    RequestTimeoutError,
    ValidationError,
)
from ..event import Event, EventMetadata
from ..options import ConsumerOptions
from ..retry import is_testing, set_testing
from ..transport import Capabilities, Message
from ..wire import parse_time
from .collect import Collector, wait_for
from .contract import ContractConformance
from .hostile import HostileConformance
from .introspection import IntrospectionConformance
from .patterns import PatternConformance

__all__ = ["TransportConformance"]


class _Opaque:
    """A value no JSON codec can encode."""


class TransportConformance(
    ContractConformance, HostileConformance, PatternConformance, IntrospectionConformance
):
    """Contract tests every transport must pass. Implement :meth:`create_bus`.

    Class attributes tune the suite for slow brokers: ``timeout`` bounds every wait
    for an expected delivery, ``scenario_timeout`` a whole test, ``many_events`` and
    ``parallel_publishes`` the sizes of the load cases, ``prompt_redelivery`` how soon
    a released event must reach another member, ``idle_seconds`` how long the idle
    case stays silent, ``groups_held_events`` how ``bus.groups()`` counts the events a
    member holds unacknowledged (see :mod:`dotmac.events.testing.introspection`).
    :meth:`cleanup` removes what a test created on a real broker.
    """

    timeout: float = 30.0
    scenario_timeout: float = 180.0
    many_events: int = 5000
    parallel_publishes: int = 10_000
    group_members: int = 4

    # -- to implement --------------------------------------------------------------------
    def create_bus(self) -> EventBus:
        """Return a new, un-started bus. Called several times per test; all buses of one
        test must reach the same broker."""
        raise NotImplementedError

    def payload(self, i: int, **extra: Any) -> dict[str, Any]:
        """The payload of the i-th test event. Keys ``i`` and ``text`` are read back."""
        return {"i": i, "text": f"event {i}", **extra}

    async def cleanup(self, bus: EventBus, topics: list[str], groups: list[str]) -> None:
        """Remove what one test created on the broker: ``topics`` (their dead-letter
        topics are ``<topic>.dlq``) and consumer ``groups``. Called with a started bus
        after every test; the default does nothing. Override it for a broker that keeps
        streams, queues or consumers (or isolate tests another way, such as a key prefix
        per test)."""

    # -- plumbing ------------------------------------------------------------------------
    def _capabilities(self) -> Capabilities:
        bus = self.create_bus()
        return bus.capabilities

    def require(self, **flags: Any) -> None:
        caps = self._capabilities()
        for name, wanted in flags.items():
            have = getattr(caps, name)
            ok = have in wanted if isinstance(wanted, tuple) else have == wanted
            if not ok:
                pytest.skip(f"transport capability {name}={have!r}")

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        previous = is_testing()
        set_testing(True)
        self._created: tuple[list[str], list[str]] = ([], [])
        try:
            asyncio.run(asyncio.wait_for(scenario(), self.scenario_timeout))
        finally:
            set_testing(previous)
            topics, groups = self._created
            if topics or groups:
                asyncio.run(self._cleanup(topics, groups))

    async def _cleanup(self, topics: list[str], groups: list[str]) -> None:
        async with self.create_bus() as bus:
            await self.cleanup(bus, topics, groups)

    def _record(self, kind: int, name: str) -> None:
        created: tuple[list[str], list[str]] | None = getattr(self, "_created", None)
        if created is not None:
            created[kind].append(name)

    def topic(self, name: str) -> str:
        topic = f"conformance.{name}.{uuid.uuid4().hex[:10]}"
        self._record(0, topic)
        return topic

    def group(self, name: str) -> str:
        group = f"conformance-{name}-{uuid.uuid4().hex[:8]}"
        self._record(1, group)
        return group

    @contextlib.asynccontextmanager
    async def buses(self, n: int = 1) -> AsyncIterator[list[EventBus]]:
        async with contextlib.AsyncExitStack() as stack:
            opened = []
            for _ in range(n):
                bus = self.create_bus()
                await stack.enter_async_context(bus)
                opened.append(bus)
            yield opened

    def event(self, topic: str, i: int, **kwargs: Any) -> Event:
        return Event(topic=topic, payload=self.payload(i), **kwargs)

    # -- liveness ------------------------------------------------------------------------
    def test_live_on_return_new_group(self) -> None:
        """A brand-new group sees an event published right after subscribe() returns."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("live-group")
                seen = Collector()
                await consumer.subscribe(topic, seen, group=self.group("live"))
                await producer.publish(self.event(topic, 1))
                await seen.wait_count(1, self.timeout)
                assert seen.payloads("i") == [1]

        self.run(scenario)

    def test_live_on_return_broadcast(self) -> None:
        """A broadcast subscription sees an event published right after subscribe() returns."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("live-broadcast")
                seen = Collector()
                await consumer.subscribe(topic, seen)
                await producer.publish(self.event(topic, 1))
                await seen.wait_count(1, self.timeout)

        self.run(scenario)

    # -- envelope ------------------------------------------------------------------------
    def test_round_trip_preserves_everything(self) -> None:
        """Payload, key, headers, tenant and every metadata field survive the trip (unicode too)."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("round-trip")
                seen = Collector()
                await consumer.subscribe(topic, seen)
                sent = Event(
                    topic=topic,
                    payload=self.payload(7, text="Zoë 🚀 日本語 — ünïcödé"),
                    key="clé-7",
                    headers={"x-trace": "abc-123", "x-note": "café ☕"},
                    tenant_id="acme_eu-1",
                    metadata=EventMetadata(
                        event_type="order.created.v1",
                        source="conformance/ßource",
                        occurred_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
                        correlation_id="corr-1",
                        causation_id="cause-1",
                        schema_version="2",
                        subject="order/7",
                        data_schema="urn:example:order:2",
                        extensions={"region": "eu", "traceparent": "00-abc-def-01"},
                    ),
                )
                await producer.publish(sent)
                await seen.wait_count(1, self.timeout)
                got = seen.events[0]
                assert got.topic == sent.topic
                assert got.payload == sent.payload
                assert got.key == sent.key
                assert dict(got.headers) == dict(sent.headers)
                assert got.tenant_id == sent.tenant_id
                for name in (
                    "event_id",
                    "event_type",
                    "source",
                    "occurred_at",
                    "correlation_id",
                    "causation_id",
                    "schema_version",
                    "subject",
                    "data_schema",
                    "extensions",
                ):
                    assert getattr(got.metadata, name) == getattr(sent.metadata, name), name
                assert got.metadata.content_type  # the codec's content type travels too

        self.run(scenario)

    def test_bad_input_rejected_before_send(self) -> None:
        """Invalid events fail at construction or publish, and nothing reaches the broker."""

        async def scenario() -> None:
            async with self.buses(1) as (bus,):
                topic = self.topic("bad-input")
                seen = Collector()
                await bus.subscribe(topic, seen)
                with pytest.raises(ValidationError):
                    await bus.publish({"topic": topic})  # type: ignore[arg-type]
                with pytest.raises(EncodeError):
                    await bus.publish(Event(topic=topic, payload={"i": -1, "bad": _Opaque()}))
                with pytest.raises(EncodeError):
                    await bus.publish_many(
                        [self.event(topic, -2), Event(topic=topic, payload={"bad": _Opaque()})]
                    )
                with pytest.raises(ValidationError):
                    Event(topic="bad topic/../x", payload={})
                await bus.publish(self.event(topic, 1))
                await seen.wait_count(1, self.timeout)
                assert seen.payloads("i") == [1]

        self.run(scenario)

    # -- fan-out -------------------------------------------------------------------------
    def test_broadcast_every_subscriber_sees_every_event(self) -> None:
        async def scenario() -> None:
            async with self.buses(3) as (a, b, producer):
                topic = self.topic("broadcast")
                first, second = Collector(), Collector()
                await a.subscribe(topic, first)
                await b.subscribe(topic, second)
                await producer.publish_many([self.event(topic, i) for i in range(20)])
                await first.wait_count(20, self.timeout)
                await second.wait_count(20, self.timeout)
                assert sorted(first.payloads("i")) == list(range(20))
                assert sorted(second.payloads("i")) == list(range(20))

        self.run(scenario)

    def test_each_group_sees_every_event(self) -> None:
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("fan-out")
                billing, shipping = Collector(), Collector()
                await consumer.subscribe(topic, billing, group=self.group("billing"))
                await consumer.subscribe(topic, shipping, group=self.group("shipping"))
                await producer.publish_many([self.event(topic, i) for i in range(30)])
                await billing.wait_count(30, self.timeout)
                await shipping.wait_count(30, self.timeout)
                assert sorted(billing.payloads("i")) == list(range(30))
                assert sorted(shipping.payloads("i")) == list(range(30))

        self.run(scenario)

    def test_group_members_split_without_duplicates(self) -> None:
        self.require(consumer_groups=True)

        async def scenario() -> None:
            topic = self.topic("split")
            group = self.group("split")
            seen = Collector()
            async with self.buses(3) as (a, b, producer):
                await a.subscribe(topic, seen, group=group)
                await b.subscribe(topic, seen, group=group)
                await producer.publish_many([self.event(topic, i, key=f"k{i % 7}") for i in range(200)])
                await seen.wait_unique(200, self.timeout)
            assert sorted(seen.payloads("i")) == list(range(200)), "an event was handled twice"

        self.run(scenario)

    def test_many_members_lose_nothing(self) -> None:
        self.require(consumer_groups=True)

        async def scenario() -> None:
            topic = self.topic("many")
            group = self.group("many")
            seen = Collector()
            n = self.many_events
            async with self.buses(3) as (a, b, producer):
                for i in range(self.group_members):
                    bus = a if i % 2 == 0 else b
                    await bus.subscribe(topic, seen, group=group, options=ConsumerOptions(concurrency=4))
                batch = 500
                for start in range(0, n, batch):
                    await producer.publish_many(
                        [self.event(topic, i, key=f"k{i % 50}") for i in range(start, min(n, start + batch))]
                    )
                await seen.wait_unique(n, self.timeout * 4)
            assert set(seen.payloads("i")) == set(range(n))

        self.run(scenario)

    def test_topics_are_isolated(self) -> None:
        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                mine, other = self.topic("mine"), self.topic("other")
                seen = Collector()
                await consumer.subscribe(mine, seen)
                await producer.publish(self.event(other, 1))
                await producer.publish(self.event(mine, 2))
                await producer.publish(self.event(other, 3))
                await producer.publish(self.event(mine, 4))
                await seen.wait_count(2, self.timeout)
            assert {e.topic for e in seen.events} == {mine}
            assert sorted(seen.payloads("i")) == [2, 4]

        self.run(scenario)

    def test_publish_many_delivers_all(self) -> None:
        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("publish-many")
                seen = Collector()
                await consumer.subscribe(topic, seen)
                await producer.publish_many([self.event(topic, i) for i in range(100)])
                await producer.publish_many([])
                await seen.wait_count(100, self.timeout)
            assert sorted(seen.payloads("i")) == list(range(100))

        self.run(scenario)

    def test_parallel_publishes_lose_nothing(self) -> None:
        async def scenario() -> None:
            n = self.parallel_publishes
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("parallel")
                seen = Collector()
                await consumer.subscribe(topic, seen, options=ConsumerOptions(concurrency=8))
                await asyncio.gather(*(producer.publish(self.event(topic, i)) for i in range(n)))
                await seen.wait_unique(n, self.timeout * 4)
            assert set(seen.payloads("i")) == set(range(n))

        self.run(scenario)

    # -- failures ------------------------------------------------------------------------
    def test_retry_then_success(self) -> None:
        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("retry")
                seen = Collector(fail=lambda e, n: RuntimeError(f"try {n}") if n < 3 else None)
                sub = await consumer.subscribe(topic, seen, options=ConsumerOptions(max_retries=3))
                event = self.event(topic, 1)
                await producer.publish(event)
                await seen.wait_count(1, self.timeout)
                assert seen.calls == {event.event_id: 3}, "the same event id on every attempt"
                assert sub.retried == 2
                assert sub.dead_lettered == 0

        self.run(scenario)

    def test_poison_event_goes_to_dlq_with_headers(self) -> None:
        """max_retries=N means N+1 calls; the dead letter keeps everything and adds x-dlq-*."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("poison")
                group = self.group("poison")
                failing = Collector(fail=lambda e, n: ValueError("bad thing\r\nhappened"))
                dead = Collector()
                await consumer.subscribe(f"{topic}.dlq", dead)
                await consumer.subscribe(topic, failing, group=group, options=ConsumerOptions(max_retries=2))
                sent = self.event(topic, 1, key="k1", tenant_id="acme", headers={"x-user": "u1"})
                before = datetime.now(timezone.utc)
                await producer.publish(sent)
                await dead.wait_count(1, self.timeout)
                assert failing.calls == {sent.event_id: 3}
                got = dead.events[0]
                assert got.event_id == sent.event_id
                assert got.payload == sent.payload
                assert got.key == "k1"
                assert got.tenant_id == "acme"
                assert got.metadata.event_type == sent.event_type
                headers = dict(got.headers)
                assert headers.pop("x-user") == "u1"
                assert headers.pop("x-dlq-original-topic") == topic
                assert headers.pop("x-dlq-consumer-group") == group
                assert headers.pop("x-dlq-error-type") == "ValueError"
                assert headers.pop("x-dlq-error-message") == "bad thing  happened"
                assert headers.pop("x-dlq-attempts") == "3"
                failed_at = parse_time(headers.pop("x-dlq-failed-at"))
                assert before <= failed_at <= datetime.now(timezone.utc)
                assert headers.pop("x-dlq-reason") == "max_retries"
                assert headers == {}

        self.run(scenario)

    def test_non_retryable_error_skips_retries(self) -> None:
        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("non-retryable")
                dlq = self.topic("custom-dlq")
                failing = Collector(fail=lambda e, n: NonRetryableError("permanent"))
                dead = Collector()
                await consumer.subscribe(dlq, dead)
                await consumer.subscribe(
                    topic, failing, options=ConsumerOptions(max_retries=5, dlq_topic=dlq)
                )
                sent = self.event(topic, 1)
                await producer.publish(sent)
                await dead.wait_count(1, self.timeout)
                assert failing.total_calls == 1
                assert dead.events[0].headers["x-dlq-attempts"] == "1"
                assert dead.events[0].headers["x-dlq-reason"] == "non_retryable"
                assert dead.events[0].headers["x-dlq-consumer-group"] == ""

        self.run(scenario)

    def test_consumer_continues_after_many_errors(self) -> None:
        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("many-errors")
                handler = Collector(fail=lambda e, n: RuntimeError("odd") if e.payload["i"] % 2 else None)
                dead = Collector()
                await consumer.subscribe(f"{topic}.dlq", dead)
                sub = await consumer.subscribe(topic, handler, options=ConsumerOptions(max_retries=1))
                await producer.publish_many([self.event(topic, i) for i in range(50)])
                await dead.wait_count(25, self.timeout)
                await handler.wait_count(25, self.timeout)
                await producer.publish_many([self.event(topic, i) for i in range(100, 120, 2)])
                await handler.wait_count(35, self.timeout)
                assert sorted(dead.payloads("i")) == list(range(1, 50, 2))
                assert sorted(handler.payloads("i")) == [*range(0, 50, 2), *range(100, 120, 2)]
                assert sub.dead_lettered == 25

        self.run(scenario)

    def test_undecodable_message_is_dead_lettered_and_consumer_continues(self) -> None:
        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("undecodable")
                handler = Collector()
                sub = await consumer.subscribe(topic, handler)
                garbage = Message(
                    topic=topic,
                    value=b"\xff\x00{not json",
                    key="g",
                    headers={
                        "ce_id": "garbage-1",
                        "ce_specversion": "1.0",
                        "content-type": "application/json",
                    },
                )
                await producer.transport.publish([garbage])
                await producer.publish(self.event(topic, 1))
                await handler.wait_count(1, self.timeout)
                await wait_for(lambda: sub.dead_lettered == 1, self.timeout, what="the dead letter")
                if producer.capabilities.readable:
                    letters = await producer.dlq.list(f"{topic}.dlq")
                    assert len(letters) == 1
                    assert letters[0].message.value == garbage.value
                    assert letters[0].reason == "decode"
                    assert letters[0].error_type == "DecodeError"
                    assert letters[0].original_topic == topic
                    assert letters[0].event_id == "garbage-1"

        self.run(scenario)

    def test_dlq_list_and_replay(self) -> None:
        self.require(readable=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("replay")
                broken = {"on": True}
                handler = Collector(fail=lambda e, n: RuntimeError("down") if broken["on"] else None)
                sub = await consumer.subscribe(topic, handler, options=ConsumerOptions(max_retries=0))
                sent = [self.event(topic, i) for i in range(3)]
                await producer.publish_many(sent)
                await wait_for(lambda: sub.dead_lettered == 3, self.timeout, what="3 dead letters")
                letters = await producer.dlq.list(f"{topic}.dlq")
                assert [dl.event_id for dl in letters] == [e.event_id for e in sent]
                assert all(dl.original_topic == topic and dl.attempts == 1 for dl in letters)
                assert all(dl.event is not None for dl in letters)
                broken["on"] = False
                replayed = await producer.dlq.replay(f"{topic}.dlq", event_ids=[sent[1].event_id])
                assert replayed == 1
                await handler.wait_count(1, self.timeout)
                assert handler.ids == [sent[1].event_id]
                assert "x-dlq-original-topic" not in handler.events[0].headers

        self.run(scenario)

    # -- ordering and backlog ------------------------------------------------------------
    def test_per_key_ordering(self) -> None:
        self.require(ordering=("key", "topic"))

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("ordering")
                seen = Collector()
                await consumer.subscribe(
                    topic,
                    seen,
                    group=self.group("order") if consumer.capabilities.consumer_groups else None,
                    options=ConsumerOptions(concurrency=4),
                )
                per_key = 40
                keys = [f"key-{k}" for k in range(5)]
                for n in range(per_key):
                    for key in keys:
                        await producer.publish(Event(topic=topic, payload=self.payload(n, text=key), key=key))
                await seen.wait_count(per_key * len(keys), self.timeout * 2)
            for key in keys:
                sequence = [e.payload["i"] for e in seen.events if e.key == key]
                assert sequence == list(range(per_key)), f"order broken for {key}: {sequence}"

        self.run(scenario)

    def test_new_group_can_start_from_backlog(self) -> None:
        self.require(replay_backlog=True, consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("backlog")
                # Make sure the topic exists before the events are published.
                await producer.publish_many([self.event(topic, i) for i in range(5)])
                seen = Collector()
                await consumer.subscribe(
                    topic, seen, group=self.group("late"), options=ConsumerOptions(start_from="earliest")
                )
                await seen.wait_count(5, self.timeout)
                await producer.publish(self.event(topic, 5))
                await seen.wait_count(6, self.timeout)
            assert sorted(seen.payloads("i")) == list(range(6))

        self.run(scenario)

    # -- shutdown ------------------------------------------------------------------------
    async def _stop_mid_flight(self, use_close: bool) -> None:
        topic = self.topic("stop" if not use_close else "close")
        group = self.group("drain")
        n = 20
        gate = asyncio.Event()
        started = asyncio.Event()

        async def blocking(event: Event) -> None:
            started.set()
            await gate.wait()

        first = Collector(on_event=blocking)
        second = Collector()
        async with self.buses(2) as (producer, survivor):
            doomed = self.create_bus()
            await doomed.start()
            try:
                sub = await doomed.subscribe(topic, first, group=group)
                sent = [self.event(topic, i, key=f"k{i % 3}") for i in range(n)]
                await producer.publish_many(sent)
                await asyncio.wait_for(started.wait(), self.timeout)
                if use_close:
                    await doomed.close(timeout=0.2)
                else:
                    await sub.stop(timeout=0.2)
                assert first.events == [], "the blocked handler must not count as handled"
            finally:
                await doomed.close(timeout=0.2)
            await survivor.subscribe(topic, second, group=group)
            await second.wait_unique(n, self.timeout * 2)
            assert set(second.ids) == {e.event_id for e in sent}

    def test_stop_with_events_in_flight_loses_nothing(self) -> None:
        self.require(consumer_groups=True)
        self.run(lambda: self._stop_mid_flight(use_close=False))

    def test_close_with_events_in_flight_loses_nothing(self) -> None:
        self.require(consumer_groups=True)
        self.run(lambda: self._stop_mid_flight(use_close=True))

    def test_close_lets_running_handlers_finish(self) -> None:
        async def scenario() -> None:
            topic = self.topic("drain")
            finished: list[int] = []
            started = asyncio.Event()

            async def slow(event: Event) -> None:
                started.set()
                await asyncio.sleep(0.2)  # work in progress when close() is called
                finished.append(event.payload["i"])

            async with self.buses(1) as (producer,):
                bus = self.create_bus()
                await bus.start()
                sub = await bus.subscribe(topic, slow)
                await producer.publish(self.event(topic, 1))
                await asyncio.wait_for(started.wait(), self.timeout)
                await bus.close(timeout=self.timeout)
                assert finished == [1]
                assert sub.handled == 1

        self.run(scenario)

    def test_close_is_idempotent(self) -> None:
        async def scenario() -> None:
            bus = self.create_bus()
            await bus.close()  # never started
            bus = self.create_bus()
            await bus.start()
            await bus.start()
            await bus.subscribe(self.topic("idem"), Collector())
            await asyncio.gather(bus.close(), bus.close())
            await bus.close()
            with pytest.raises(BusStateError):
                await bus.publish(self.event(self.topic("idem"), 1))
            with pytest.raises(BusStateError):
                await bus.start()

        self.run(scenario)

    def test_no_task_left_after_close(self) -> None:
        async def scenario() -> None:
            before = asyncio.all_tasks()
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("tasks")
                seen = Collector()
                await consumer.subscribe(topic, seen)
                if consumer.capabilities.consumer_groups:
                    await consumer.subscribe(topic, Collector(), group=self.group("tasks"))
                await producer.publish(self.event(topic, 1))
                await seen.wait_count(1, self.timeout)
                if consumer.capabilities.request_reply:
                    await consumer.subscribe(topic + ".rpc", lambda e: {"ok": True}, group=self.group("rpc"))
                    await producer.request(self.event(topic + ".rpc", 1), timeout=self.timeout)
            # Give cancelled callbacks one loop turn to unwind.
            await asyncio.sleep(0)
            left = [t for t in asyncio.all_tasks() - before if not t.done()]
            assert left == [], f"tasks left after close: {left}"

        self.run(scenario)

    # -- request / reply -----------------------------------------------------------------
    def test_request_reply(self) -> None:
        self.require(request_reply=True)

        async def scenario() -> None:
            async with self.buses(2) as (server, client):
                topic = self.topic("rpc")

                async def double(event: Event) -> dict[str, Any]:
                    return {"doubled": event.payload["i"] * 2}

                await server.subscribe(
                    topic, double, group=self.group("rpc") if server.capabilities.consumer_groups else None
                )
                request = self.event(topic, 21, tenant_id="acme")
                reply = await client.request(request, timeout=self.timeout)
                assert reply.payload == {"doubled": 42}
                assert reply.metadata.correlation_id == request.event_id
                assert reply.metadata.causation_id == request.event_id
                assert reply.tenant_id == "acme"
                second = await client.request(self.event(topic, 5), timeout=self.timeout)
                assert second.payload == {"doubled": 10}

        self.run(scenario)

    def test_request_times_out_without_responder(self) -> None:
        self.require(request_reply=True)

        async def scenario() -> None:
            async with self.buses(1) as (client,):
                with pytest.raises(RequestTimeoutError):
                    await client.request(self.event(self.topic("nobody"), 1), timeout=0.5)

        self.run(scenario)
