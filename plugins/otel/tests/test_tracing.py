"""Spans on the memory transport, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dotmac.events import (
    ConsumerOptions,
    Event,
    EventMetadata,
    Message,
    NonRetryableError,
    create_bus,
    hookimpl,
)
from dotmac.events.errors import MessageTooLargeError
from dotmac.events.event import MAX_HEADER_COUNT

NO_WAIT = ConsumerOptions(max_retries=3, backoff_base_ms=0, retry_policy="fixed")


def _setter(flag: asyncio.Event) -> Callable[[Event], Awaitable[None]]:
    """An async handler that sets ``flag`` (on the loop: asyncio.Event is not thread-safe)."""

    async def handler(event: Event) -> None:
        flag.set()

    return handler


def traceparent_of(span: Any) -> str:
    ctx = span.get_span_context() if hasattr(span, "get_span_context") else span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


async def test_publish_and_consume_are_parent_and_child(telemetry, make_bus, new_topic):
    topic = new_topic()
    seen: list[Event] = []
    handled = asyncio.Event()

    async def handle(event: Event) -> None:
        with telemetry.tracer.start_as_current_span("handler work"):
            seen.append(event)
        handled.set()

    async with make_bus() as bus:
        await bus.subscribe(topic, handle, group="billing")
        await bus.publish(Event(topic=topic, payload={"id": 7}, key="7", tenant_id="acme"))
        await asyncio.wait_for(handled.wait(), 5)

    producer = telemetry.one(f"publish {topic}", SpanKind.PRODUCER)
    consumer = telemetry.one(f"process {topic}", SpanKind.CONSUMER)
    work = telemetry.one("handler work")
    assert producer.parent is None
    assert consumer.context.trace_id == producer.context.trace_id == work.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert consumer.parent.is_remote
    assert work.parent is not None and work.parent.span_id == consumer.context.span_id
    # The context travelled in the event's headers, as W3C trace context.
    assert seen[0].headers["traceparent"] == traceparent_of(producer)

    event_id = seen[0].event_id
    assert dict(producer.attributes) == {
        "messaging.system": "memory",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "messaging.message.id": event_id,
        "dotmac.events.tenant_id": "acme",
    }
    attrs = dict(consumer.attributes)
    assert attrs["messaging.system"] == "memory"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == topic
    assert attrs["messaging.message.id"] == event_id
    assert attrs["messaging.consumer.group.name"] == "billing"
    assert attrs["dotmac.events.tenant_id"] == "acme"
    assert attrs["dotmac.events.outcome"] == "success"
    assert attrs["dotmac.events.attempts"] == 1
    assert attrs["dotmac.events.delivery_count"] == 1
    assert attrs["dotmac.events.position"] == "0"
    assert attrs["messaging.client.id"]
    # The key is a Kafka attribute; memory has no such convention.
    assert "messaging.kafka.message.key" not in attrs
    assert consumer.status.status_code is StatusCode.UNSET
    assert producer.status.status_code is StatusCode.UNSET


async def test_producer_span_is_child_of_the_callers_span(telemetry, make_bus, new_topic):
    topic = new_topic()
    handled = asyncio.Event()
    async with make_bus() as bus:
        await bus.subscribe(topic, _setter(handled))
        with telemetry.tracer.start_as_current_span("request handler") as outer:
            await bus.publish(Event(topic=topic, payload={}))
            # The PRODUCER span is current only while publishing.
            assert trace.get_current_span() is outer
        await asyncio.wait_for(handled.wait(), 5)
    producer = telemetry.one(f"publish {topic}")
    consumer = telemetry.one(f"process {topic}")
    assert producer.parent is not None and producer.parent.span_id == outer.get_span_context().span_id
    assert consumer.context.trace_id == outer.get_span_context().trace_id
    # Broadcast: no consumer group.
    assert "messaging.consumer.group.name" not in consumer.attributes


async def test_consumer_span_ignores_the_subscribers_context(telemetry, make_bus, new_topic):
    """Deliveries without trace context start their own trace, not the subscriber's."""
    topic = new_topic()
    handled = asyncio.Event()
    async with make_bus() as bus:
        with telemetry.tracer.start_as_current_span("startup"):
            await bus.subscribe(topic, _setter(handled))
        # Sent past the observer: no traceparent header.
        await bus.transport.publish([bus.encode(Event(topic=topic, payload={}))])
        await asyncio.wait_for(handled.wait(), 5)
    consumer = telemetry.one(f"process {topic}")
    assert consumer.parent is None


async def test_retries_are_span_events(telemetry, make_bus, new_topic):
    topic = new_topic()
    calls = 0
    done = asyncio.Event()

    async def flaky(event: Event) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"downstream unavailable ({calls})")
        done.set()

    async with make_bus() as bus:
        await bus.subscribe(topic, flaky, group="g", options=NO_WAIT)
        await bus.publish(Event(topic=topic, payload={}))
        await asyncio.wait_for(done.wait(), 5)

    consumer = telemetry.one(f"process {topic}")
    retries = [e for e in consumer.events if e.name == "dotmac.events.retry"]
    assert [e.attributes["dotmac.events.attempt"] for e in retries] == [1, 2]
    assert retries[0].attributes["exception.type"] == "ConnectionError"
    assert retries[1].attributes["exception.message"] == "downstream unavailable (2)"
    assert retries[0].attributes["dotmac.events.retry_delay_s"] == 0.0
    assert consumer.attributes["dotmac.events.attempts"] == 3
    assert consumer.attributes["dotmac.events.outcome"] == "success"
    # Recovered: not an error.
    assert consumer.status.status_code is StatusCode.UNSET


async def test_dead_letter_sets_error_status_and_event(telemetry, make_bus, new_topic):
    topic = new_topic()
    dead = asyncio.Event()

    def broken(event: Event) -> None:
        raise ValueError("cannot bill order 7")

    async with make_bus() as bus:
        await bus.subscribe(f"{topic}.dlq", _setter(dead))
        await bus.subscribe(
            topic,
            broken,
            group="billing",
            options=ConsumerOptions(max_retries=1, backoff_base_ms=0, retry_policy="fixed"),
        )
        await bus.publish(Event(topic=topic, payload={}))
        await asyncio.wait_for(dead.wait(), 5)

    consumer = telemetry.one(f"process {topic}")
    names = [e.name for e in consumer.events]
    assert names == ["dotmac.events.retry", "dotmac.events.dead_letter", "exception"]
    dead_letter = consumer.events[1].attributes
    assert dead_letter["dotmac.events.dlq_topic"] == f"{topic}.dlq"
    assert dead_letter["dotmac.events.dlq_reason"] == "max_retries"
    assert dead_letter["dotmac.events.attempts"] == 2
    assert dead_letter["exception.type"] == "ValueError"
    assert consumer.events[2].attributes["exception.message"] == "cannot bill order 7"
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.status.description == "ValueError: cannot bill order 7"
    assert consumer.attributes["error.type"] == "ValueError"
    assert consumer.attributes["dotmac.events.outcome"] == "dead_letter"
    # The dead letter itself is published by the runner, not through bus.publish: the
    # DLQ consumer still continues the trace because the headers are copied unchanged.
    dlq_consumer = telemetry.one(f"process {topic}.dlq")
    assert dlq_consumer.context.trace_id == consumer.context.trace_id


async def test_non_retryable_error_goes_straight_to_the_dead_letter(telemetry, make_bus, new_topic):
    topic = new_topic()
    dead = asyncio.Event()

    def reject(event: Event) -> None:
        raise NonRetryableError("malformed order")

    async with make_bus() as bus:
        await bus.subscribe(f"{topic}.dlq", _setter(dead))
        await bus.subscribe(topic, reject, options=NO_WAIT)
        await bus.publish(Event(topic=topic, payload={}))
        await asyncio.wait_for(dead.wait(), 5)
    consumer = telemetry.one(f"process {topic}")
    assert [e.name for e in consumer.events] == ["dotmac.events.dead_letter", "exception"]
    assert consumer.events[0].attributes["dotmac.events.dlq_reason"] == "non_retryable"
    assert consumer.attributes["dotmac.events.attempts"] == 1
    assert consumer.status.status_code is StatusCode.ERROR


async def test_request_reply_is_one_trace(telemetry, make_bus, new_topic):
    topic = new_topic()

    async def quote(event: Event) -> dict[str, Any]:
        with telemetry.tracer.start_as_current_span("pricing"):
            return {"price": 42}

    async with make_bus() as server, make_bus() as client:
        await server.subscribe(topic, quote, group="pricing")
        with telemetry.tracer.start_as_current_span("checkout") as root:
            reply = await client.request(Event(topic=topic, payload={"sku": "x"}), timeout=5)
        assert reply.payload == {"price": 42}

    trace_id = root.get_span_context().trace_id
    request_pub = telemetry.one(f"publish {topic}")
    request_proc = telemetry.one(f"process {topic}")
    pricing = telemetry.one("pricing")
    reply_pub = telemetry.one("publish dotmac.reply.{bus}")
    reply_proc = telemetry.one("process dotmac.reply.{bus}")
    chain = [request_pub, request_proc, reply_pub, reply_proc]
    assert all(s.context.trace_id == trace_id for s in [*chain, pricing])
    assert request_pub.parent.span_id == root.get_span_context().span_id
    assert request_proc.parent.span_id == request_pub.context.span_id
    assert pricing.parent.span_id == request_proc.context.span_id
    # The reply is published inside the CONSUMER span, so it continues the trace.
    assert reply_pub.parent.span_id == request_proc.context.span_id
    assert reply_proc.parent.span_id == reply_pub.context.span_id
    assert reply_pub.attributes["messaging.destination.temporary"] is True
    assert reply_pub.attributes["messaging.destination.template"] == "dotmac.reply.{bus}"
    assert reply_pub.attributes["messaging.destination.name"].startswith("dotmac.reply.")
    correlation = request_pub.attributes["messaging.message.conversation_id"]
    assert reply_proc.attributes["messaging.message.conversation_id"] == correlation


async def test_publish_many_spans_are_siblings(telemetry, make_bus, new_topic):
    topic = new_topic()
    got: list[Event] = []
    all_in = asyncio.Event()

    async def handle(event: Event) -> None:
        got.append(event)
        if len(got) == 3:
            all_in.set()

    async with make_bus() as bus:
        await bus.subscribe(topic, handle)
        with telemetry.tracer.start_as_current_span("batch") as outer:
            await bus.publish_many([Event(topic=topic, payload={"n": n}) for n in range(3)])
        await asyncio.wait_for(all_in.wait(), 5)
    producers = telemetry.named(f"publish {topic}")
    consumers = telemetry.named(f"process {topic}")
    assert len(producers) == len(consumers) == 3
    outer_id = outer.get_span_context().span_id
    assert all(p.parent.span_id == outer_id for p in producers)
    assert all(p.attributes["messaging.batch.message_count"] == 3 for p in producers)
    by_message = {p.attributes["messaging.message.id"]: p for p in producers}
    for c in consumers:
        assert c.parent.span_id == by_message[c.attributes["messaging.message.id"]].context.span_id


async def test_failed_publish_is_an_error_span(telemetry, make_bus, new_topic):
    topic = new_topic()
    async with make_bus(max_message_bytes=64) as bus:
        try:
            await bus.publish(Event(topic=topic, payload={"blob": "x" * 200}))
        except MessageTooLargeError:
            pass
        else:
            raise AssertionError("the oversized event was published")
    producer = telemetry.one(f"publish {topic}")
    assert producer.status.status_code is StatusCode.ERROR
    assert producer.attributes["error.type"] == "MessageTooLargeError"
    assert [e.name for e in producer.events] == ["exception"]


async def test_undecodable_message_gets_a_dead_letter_span_in_the_producers_trace(
    telemetry, make_bus, new_topic
):
    topic = new_topic()
    dead = asyncio.Event()

    class DeadLetterSignal:
        # The DLQ copy is undecodable too, so no handler could tell us it arrived.
        @hookimpl
        def dotmac_events_on_dead_letter(self, info: Any, **_: Any) -> None:
            if info.topic == topic:
                dead.set()

    async with make_bus(observers=[DeadLetterSignal()]) as bus:
        await bus.subscribe(topic, lambda e: None, group="g")
        with telemetry.tracer.start_as_current_span("raw producer") as raw:
            headers = {"ce_id": "evt-1", "ce_tenantid": "acme", "content-type": "application/json"}
            TraceContextTextMapPropagator().inject(headers)
            await bus.transport.publish([Message(topic=topic, value=b"{not json", headers=headers)])
        await asyncio.wait_for(dead.wait(), 5)
    consumer = telemetry.one(f"process {topic}")
    assert consumer.parent.span_id == raw.get_span_context().span_id
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.attributes["messaging.message.id"] == "evt-1"
    assert consumer.attributes["dotmac.events.tenant_id"] == "acme"
    assert consumer.attributes["dotmac.events.outcome"] == "dead_letter"
    assert consumer.attributes["messaging.consumer.group.name"] == "g"
    [dead_letter] = consumer.events
    assert dead_letter.name == "dotmac.events.dead_letter"
    assert dead_letter.attributes["dotmac.events.dlq_reason"] == "decode"


async def test_cancelled_handling_is_released_not_failed(telemetry, make_bus, new_topic):
    topic = new_topic()
    started = asyncio.Event()

    async def stuck(event: Event) -> None:
        started.set()
        await asyncio.Event().wait()

    bus = make_bus(drain_timeout=0.05)
    async with bus:
        await bus.subscribe(topic, stuck, group="g")
        await bus.publish(Event(topic=topic, payload={}))
        await asyncio.wait_for(started.wait(), 5)
    consumer = telemetry.one(f"process {topic}")
    assert consumer.attributes["dotmac.events.outcome"] == "released"
    assert consumer.status.status_code is StatusCode.UNSET


async def test_republished_event_links_to_its_first_trace(telemetry, make_bus, new_topic):
    topic = new_topic()
    handled = asyncio.Event()
    received: list[Event] = []

    async def handle(event: Event) -> None:
        received.append(event)
        handled.set()

    old_traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with make_bus() as bus:
        await bus.subscribe(topic, handle)
        forwarded = Event(
            topic=topic, payload={}, headers={"traceparent": old_traceparent, "tracestate": "vendor=old"}
        )
        await bus.publish(forwarded)
        await asyncio.wait_for(handled.wait(), 5)
    producer = telemetry.one(f"publish {topic}")
    [link] = producer.links
    assert f"{link.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    headers = received[0].headers
    assert headers["traceparent"] == traceparent_of(producer)
    # The first trace's tracestate must not ride along with the new traceparent.
    assert headers["tracestate"] == ""
    consumer = telemetry.one(f"process {topic}")
    assert consumer.parent.span_id == producer.context.span_id


async def test_full_headers_skip_propagation_instead_of_failing(telemetry, make_bus, new_topic, caplog):
    topic = new_topic()
    handled = asyncio.Event()
    received: list[Event] = []

    async def handle(event: Event) -> None:
        received.append(event)
        handled.set()

    headers = {f"h{i}": "v" for i in range(MAX_HEADER_COUNT)}
    async with make_bus() as bus:
        await bus.subscribe(topic, handle)
        with caplog.at_level(logging.WARNING, logger="dotmac_events_otel"):
            await bus.publish(Event(topic=topic, payload={}, headers=headers))
        await asyncio.wait_for(handled.wait(), 5)
    assert "traceparent" not in received[0].headers
    assert "trace context not propagated" in caplog.text
    # Still traced on both sides, as two traces.
    producer = telemetry.one(f"publish {topic}")
    consumer = telemetry.one(f"process {topic}")
    assert consumer.parent is None
    assert consumer.context.trace_id != producer.context.trace_id


async def test_tracing_off_records_no_spans_but_metrics(telemetry, new_topic, memory_url):
    topic = new_topic()
    handled = asyncio.Event()
    async with create_bus(memory_url, observers=[telemetry.observer(tracing=False)]) as bus:
        await bus.subscribe(topic, _setter(handled))
        await bus.publish(Event(topic=topic, payload={}))
        await asyncio.wait_for(handled.wait(), 5)
    assert telemetry.spans() == []
    assert telemetry.value("events_published_total", topic=topic) == 1


async def test_errors_outside_the_handler_are_recorded_on_the_consumer_span(telemetry, make_bus, new_topic):
    topic = new_topic()
    handled = asyncio.Event()

    async def answer_badly(event: Event) -> int:
        handled.set()
        return 42  # a request handler must return a dict or an Event: the reply fails

    async with make_bus() as bus:
        await bus.subscribe(topic, answer_badly)
        await bus.publish(Event(topic=topic, payload={}, metadata=EventMetadata(reply_to=f"{topic}.reply")))
        await asyncio.wait_for(handled.wait(), 5)
    consumer = telemetry.one(f"process {topic}")
    [error] = [e for e in consumer.events if e.name == "exception"]
    assert error.attributes["dotmac.events.where"] == "reply"
    assert error.attributes["exception.type"] == "dotmac.events.errors.ValidationError"
    # The handler itself succeeded; the event was acknowledged.
    assert consumer.attributes["dotmac.events.outcome"] == "success"
