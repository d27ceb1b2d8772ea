"""Conformance cases for hostile input and misbehaving handlers.

Part of :class:`~dotmac.events.testing.TransportConformance`: whatever bytes reach
a topic and whatever a handler or an observer does, every healthy event is handled,
every poison message is dead-lettered exactly once with its reason, and the
subscription stays live. Poison is written with ``bus.transport.publish`` (raw
messages, no validation), the way a foreign producer would write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import HandlerTimeoutError, NonRetryableError, RemoteHandlerError
from ..event import Event, EventMetadata
from ..options import ConsumerOptions
from ..plugins import hookimpl
from ..transport import Message
from .collect import Collector, wait_for

if TYPE_CHECKING:
    from ..bus import EventBus
    from ..transport import Capabilities

__all__ = ["HostileConformance", "RaisingObserver", "ReasonRecorder"]


class ReasonRecorder:
    """An observer recording every dead letter as ``(ce_id, reason)``."""

    def __init__(self) -> None:
        self.letters: list[tuple[str | None, str]] = []

    @hookimpl
    def dotmac_events_on_dead_letter(self, message: Message, reason: str) -> None:
        self.letters.append((message.headers.get("ce_id"), reason))


class RaisingObserver:
    """An observer whose every hook raises (context managers too, on enter or exit)."""

    def __init__(self) -> None:
        self.calls = 0

    def _boom(self) -> None:
        self.calls += 1
        raise RuntimeError("observer failure")

    @contextlib.contextmanager
    def _cm(self, fail_on_enter: bool) -> Iterator[None]:
        if fail_on_enter:
            self._boom()
        yield
        self._boom()

    @hookimpl
    def dotmac_events_publish_context(self, event: Event) -> Any:
        return self._cm(fail_on_enter=event.payload.get("i", 0) % 2 == 0)

    @hookimpl
    def dotmac_events_consume_context(self, event: Event) -> Any:
        return self._cm(fail_on_enter=event.payload.get("i", 0) % 2 == 1)

    @hookimpl
    def dotmac_events_on_publish(self) -> None:
        self._boom()

    @hookimpl
    def dotmac_events_on_consume(self) -> None:
        self._boom()

    @hookimpl
    def dotmac_events_on_retry(self) -> None:
        self._boom()

    @hookimpl
    def dotmac_events_on_dead_letter(self) -> None:
        self._boom()

    @hookimpl
    def dotmac_events_on_error(self) -> None:
        self._boom()


class _CustomBaseException(BaseException):
    """Neither an Exception nor a shutdown: a handler failure like any other."""


class HostileConformance:
    """Mixed into :class:`TransportConformance`; uses its plumbing."""

    timeout: float

    # Provided by TransportConformance.
    def create_bus(self) -> EventBus:
        raise NotImplementedError

    def require(self, **flags: Any) -> None:
        raise NotImplementedError

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        raise NotImplementedError

    def buses(self, n: int = 1) -> contextlib.AbstractAsyncContextManager[list[EventBus]]:
        raise NotImplementedError

    def event(self, topic: str, i: int, **kwargs: Any) -> Event:
        raise NotImplementedError

    def payload(self, i: int, **extra: Any) -> dict[str, Any]:
        raise NotImplementedError

    def topic(self, name: str) -> str:
        raise NotImplementedError

    def group(self, name: str) -> str:
        raise NotImplementedError

    def _capabilities(self) -> Capabilities:
        raise NotImplementedError

    def _group_or_none(self, name: str) -> str | None:
        return self.group(name) if self._capabilities().consumer_groups else None

    def _observed(self, *observers: object) -> EventBus:
        bus = self.create_bus()
        for observer in observers:
            bus.add_observer(observer)
        return bus

    # -- hostile input -------------------------------------------------------------------
    def test_poison_messages_are_dead_lettered_once_and_the_consumer_goes_on(self) -> None:
        """Poison among healthy events, with a prefetch of 2 so a leaked slot would stop
        the consumer: each poison message is dead-lettered once with its reason."""

        async def scenario() -> None:
            async with self.buses(1) as (bus,):
                if bus.codec.content_type != "application/json":
                    pytest.skip("the poison bodies are written for the JSON codec")
                topic = self.topic("poison")
                recorder = ReasonRecorder()
                seen = Collector()
                options = ConsumerOptions(prefetch_count=2, max_retries=0, max_message_bytes=4096)
                async with self._observed(recorder) as observed:
                    sub = await observed.subscribe(
                        topic, seen, group=self._group_or_none("p"), options=options
                    )
                    healthy = bus.encode(self.event(topic, 0))

                    def poison(ce_id: str, *, value: bytes | None = None, **changes: str) -> Message:
                        changes = {
                            "content-type" if k == "content_type" else k: v for k, v in changes.items()
                        }
                        headers = {**healthy.headers, "ce_id": ce_id, **changes}
                        return Message(topic, healthy.value if value is None else value, None, headers)

                    edge_time = "0001-01-01T00:30:00+01:00"  # before year 1 in UTC
                    cases = {
                        "bad-json": ("decode", poison("bad-json", value=b"{not json")),
                        "bad-utf8": ("decode", poison("bad-utf8", value=b'{"a": "\xff\xfe"}')),
                        "edge-time-low": ("decode", poison("edge-time-low", ce_time=edge_time)),
                        "edge-time-high": (
                            "decode",
                            poison("edge-time-high", ce_time="9999-12-31T23:59:59-01:00"),
                        ),
                        "bad-type": (
                            "decode",
                            poison("bad-type", content_type="application/x-nothing"),
                        ),
                        "too-large": (
                            "too_large",
                            poison("too-large", value=b'{"pad": "' + b"x" * 8000 + b'"}'),
                        ),
                    }
                    batch = [bus.encode(self.event(topic, 1))]
                    for _reason, message in cases.values():
                        batch.append(message)
                        batch.append(bus.encode(self.event(topic, len(batch))))
                    for message in batch:  # one by one: a batch may not mix sizes everywhere
                        await bus.transport.publish([message])
                    healthy_count = len(batch) - len(cases)
                    await seen.wait_count(healthy_count, self.timeout)
                    await wait_for(
                        lambda: len(recorder.letters) >= len(cases), self.timeout, what="dead letters"
                    )
                    assert sorted(recorder.letters) == sorted((k, r) for k, (r, _m) in cases.items())
                    assert sub.active
                    await bus.publish(self.event(topic, 999))
                    await seen.wait(
                        lambda c: 999 in c.payloads("i"), self.timeout, what="the event after the poison"
                    )
                    assert sub.dead_lettered == len(cases)
                    assert sub.errors == 0

        self.run(scenario)

    # -- misbehaving handlers --------------------------------------------------------------
    @pytest.mark.parametrize(
        "raised",
        [asyncio.CancelledError, GeneratorExit, _CustomBaseException, RecursionError],
        ids=["CancelledError", "GeneratorExit", "BaseException", "RecursionError"],
    )
    def test_any_exception_a_handler_raises_is_a_failure(self, raised: type[BaseException]) -> None:
        """Only the runner's own cancellation is a shutdown: whatever else a handler
        raises is retried, then dead-lettered, and the lane handles the next event."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("raises")

                def fail(event: Event, _n: int) -> BaseException | None:
                    return raised("from the handler") if event.payload["i"] == 1 else None

                seen = Collector(fail=fail)
                sub = await consumer.subscribe(
                    topic, seen, group=self._group_or_none("r"), options=ConsumerOptions(max_retries=1)
                )
                first = self.event(topic, 1)
                await producer.publish(first)
                await wait_for(lambda: sub.dead_lettered == 1, self.timeout, what="the dead letter")
                assert seen.calls[first.event_id] == 2  # one retry, then the dead letter
                await producer.publish(self.event(topic, 2))
                await seen.wait_count(1, self.timeout)
                assert sub.active

        self.run(scenario)

    def test_a_hanging_handler_times_out_with_a_reason(self) -> None:
        async def scenario() -> None:
            async with self.buses(1) as (bus,):
                topic = self.topic("hang")
                recorder = ReasonRecorder()
                async with self._observed(recorder) as observed:

                    async def hang(event: Event) -> None:
                        await asyncio.Event().wait()

                    options = ConsumerOptions(max_retries=0, handler_timeout=0.05)
                    sub = await observed.subscribe(
                        topic, hang, group=self._group_or_none("h"), options=options
                    )
                    await bus.publish(self.event(topic, 1))
                    await wait_for(lambda: sub.dead_lettered == 1, self.timeout, what="the dead letter")
                    assert [r for _i, r in recorder.letters] == ["max_retries"]
                    if bus.capabilities.readable:
                        letters = await bus.dlq.list(options.dlq_for(topic))
                        assert letters[-1].error_type == HandlerTimeoutError.__name__
                        assert letters[-1].error_message

        self.run(scenario)

    def test_a_blocking_sync_handler_does_not_stall_other_subscriptions(self) -> None:
        """A sync handler runs in a worker thread: while it blocks, another subscription
        on the same bus keeps handling (it is what unblocks the sync handler here)."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                blocked_topic, other_topic = self.topic("sync-block"), self.topic("sync-other")
                gate = threading.Event()
                results: list[bool] = []

                def blocking(event: Event) -> None:
                    results.append(gate.wait(self.timeout))

                other = Collector(on_event=lambda e: gate.set())
                await consumer.subscribe(blocked_topic, blocking, group=self._group_or_none("s"))
                await consumer.subscribe(other_topic, other, group=self._group_or_none("o"))
                await producer.publish(self.event(blocked_topic, 1))
                await producer.publish(self.event(other_topic, 2))
                await other.wait_count(1, self.timeout)
                await wait_for(lambda: bool(results), self.timeout, what="the sync handler")
                assert results == [True]

        self.run(scenario)

    def test_raising_observers_never_change_delivery(self) -> None:
        async def scenario() -> None:
            raising = RaisingObserver()
            async with self._observed(raising) as bus:
                topic = self.topic("observers")
                seen = Collector(fail=lambda e, n: RuntimeError("once") if n == 1 else None)
                sub = await bus.subscribe(
                    topic, seen, group=self._group_or_none("obs"), options=ConsumerOptions(max_retries=1)
                )
                poison = self.topic("observers-dlq")
                fails = Collector(fail=lambda e, n: NonRetryableError("always"))
                dead = await bus.subscribe(poison, fails, group=self._group_or_none("obs-dlq"))
                for i in range(4):
                    await bus.publish(self.event(topic, i))
                await bus.publish_many([self.event(poison, 10)])
                await seen.wait_count(4, self.timeout)
                await wait_for(lambda: dead.dead_lettered == 1, self.timeout, what="the dead letter")
                assert sorted(seen.payloads("i")) == [0, 1, 2, 3]
                assert sub.retried == 4
                assert raising.calls > 0
                assert set(bus.observers.failures) >= {
                    "publish_context",
                    "consume_context",
                    "on_publish",
                    "on_consume",
                    "on_retry",
                    "on_dead_letter",
                }

        self.run(scenario)

    def test_dead_letters_are_not_dead_lettered_again(self) -> None:
        async def scenario() -> None:
            async with self.buses(1) as (bus,):
                topic = self.topic("dlq-twice")
                options = ConsumerOptions(max_retries=0)
                failing = Collector(fail=lambda e, n: NonRetryableError("first"))
                first = await bus.subscribe(topic, failing, group=self._group_or_none("a"), options=options)
                still_failing = Collector(fail=lambda e, n: NonRetryableError("second"))
                dlq = options.dlq_for(topic)
                second = await bus.subscribe(
                    dlq, still_failing, group=self._group_or_none("b"), options=options
                )
                await bus.publish(self.event(topic, 1))
                # The dead letter can reach the second subscription before the broker's
                # confirm of its write reaches the first one: wait for both.
                await wait_for(
                    lambda: second.discarded == 1 and first.dead_lettered == 1,
                    self.timeout,
                    what="the dead letter, then its discarding",
                )
                assert second.dead_lettered == 0
                assert second.active

        self.run(scenario)

    # -- request-reply -------------------------------------------------------------------
    def test_concurrent_requests_sharing_a_correlation_id_get_their_own_replies(self) -> None:
        self.require(request_reply=True)

        async def scenario() -> None:
            async with self.buses(2) as (server, client):
                topic = self.topic("rpc-shared")

                async def double(event: Event) -> dict[str, Any]:
                    return {"doubled": event.payload["i"] * 2}

                await server.subscribe(topic, double, group=self._group_or_none("rpc"))
                requests = [
                    Event(
                        topic=topic,
                        payload=self.payload(i),
                        metadata=EventMetadata(correlation_id="one-conversation"),
                    )
                    for i in (1, 2)
                ]
                replies = await asyncio.gather(*(client.request(r, timeout=self.timeout) for r in requests))
                assert [r.payload["doubled"] for r in replies] == [2, 4]

        self.run(scenario)

    @pytest.mark.parametrize("returned", [42, [1, 2], "text"], ids=["int", "list", "str"])
    def test_a_reply_that_cannot_be_sent_reaches_the_requester_as_an_error(self, returned: Any) -> None:
        self.require(request_reply=True)

        async def scenario() -> None:
            async with self.buses(2) as (server, client):
                topic = self.topic("rpc-bad")

                async def bad(event: Event) -> Any:
                    return returned

                await server.subscribe(topic, bad, group=self._group_or_none("rpc"))
                with pytest.raises(RemoteHandlerError) as caught:
                    await client.request(self.event(topic, 1), timeout=self.timeout)
                assert caught.value.error_type == "ValidationError"
                assert type(returned).__name__ in str(caught.value)

        self.run(scenario)

    def test_a_failing_request_handler_answers_with_an_error(self) -> None:
        self.require(request_reply=True)

        async def scenario() -> None:
            async with self.buses(2) as (server, client):
                topic = self.topic("rpc-fail")
                failing = Collector(fail=lambda e, n: NonRetryableError("no quote for you"))
                await server.subscribe(topic, failing, group=self._group_or_none("rpc"))
                with pytest.raises(RemoteHandlerError, match="no quote for you") as caught:
                    await client.request(self.event(topic, 1), timeout=self.timeout)
                assert caught.value.error_type == "NonRetryableError"

        self.run(scenario)
