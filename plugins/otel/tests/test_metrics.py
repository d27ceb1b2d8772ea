"""The six series through the OpenTelemetry metrics API (SDK in-memory reader)."""

from __future__ import annotations

from typing import Any

import pytest

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.errors import ConfigurationError, QueueFullError
from dotmac.events.metrics import DURATION_BUCKETS, OTHER
from dotmac_events_otel import METRIC_NAMES, OtelObserver

FAST = ConsumerOptions(max_retries=2, backoff_base_ms=0, retry_policy="fixed")


async def run_mixed_workload(bus: Any, topic: str, outcomes: Any) -> None:
    """3 successes, 1 success after 2 retries, 1 dead letter after 2 retries."""
    calls: dict[str, int] = {}

    def handle(event: Event) -> None:
        calls[event.event_id] = calls.get(event.event_id, 0) + 1
        kind = event.payload["kind"]
        if kind == "flaky" and calls[event.event_id] <= 2:
            raise ConnectionError("try again")
        if kind == "broken":
            raise ValueError("never works")

    await bus.subscribe(topic, handle, group="billing", options=FAST)
    for kind, tenant in [
        ("ok", "acme"),
        ("ok", "acme"),
        ("ok", "globex"),
        ("flaky", "acme"),
        ("broken", "acme"),
    ]:
        await bus.publish(Event(topic=topic, payload={"kind": kind}, tenant_id=tenant))
    await outcomes.wait(5, topic)


async def test_six_series_with_exact_counts(telemetry, new_topic, memory_url, outcomes):
    topic = new_topic()
    async with create_bus(memory_url, observers=[telemetry.observer(), outcomes]) as bus:
        await run_mixed_workload(bus, topic, outcomes)
    names = {m for m in METRIC_NAMES if telemetry.points(m)}
    assert names == set(METRIC_NAMES)
    base = {"topic": topic, "transport": "memory"}
    assert telemetry.value("events_published_total", **base, outcome="success") == 5
    assert telemetry.value("event_publish_duration_seconds", **base, outcome="success") == 5
    group = {**base, "consumer_group": "billing"}
    assert telemetry.value("events_consumed_total", **group, outcome="success") == 4
    assert telemetry.value("events_consumed_total", **group, outcome="dead_letter") == 1
    assert telemetry.value("event_consume_duration_seconds", **group, outcome="success") == 4
    assert telemetry.value("event_consume_duration_seconds", **group, outcome="dead_letter") == 1
    assert telemetry.value("events_retried_total", **group) == 4
    assert telemetry.value("events_dlq_total", **group, reason="max_retries") == 1
    # No tenant attribute unless asked for.
    assert all("tenant" not in attrs for attrs, _ in telemetry.points("events_consumed_total"))
    # Histograms use bucket bounds in seconds, not the SDK's millisecond defaults.
    [(_, point)] = [
        p for p in telemetry.points("event_consume_duration_seconds") if p[0]["outcome"] == "dead_letter"
    ]
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS


async def test_tenant_attribute_is_capped(telemetry, new_topic, memory_url):
    topic = new_topic()
    observer = telemetry.observer(tenant_metrics=True, max_tenants=2, tracing=False)
    async with create_bus(memory_url, observers=[observer]) as bus:
        for tenant in ["t1", "t2", "t3", "t4", "t1", None]:
            await bus.publish(Event(topic=topic, payload={}, tenant_id=tenant))
    tenants = {attrs["tenant"]: point.value for attrs, point in telemetry.points("events_published_total")}
    assert tenants == {"t1": 2, "t2": 1, OTHER: 2, "": 1}


async def test_topic_attribute_is_capped_and_reply_topics_collapse(telemetry, new_topic, memory_url):
    observer = telemetry.observer(max_topics=2, tracing=False)
    topics = [new_topic() for _ in range(4)]
    async with create_bus(memory_url, observers=[observer]) as bus:
        for topic in topics:
            await bus.publish(Event(topic=topic, payload={}))
    values = {attrs["topic"]: point.value for attrs, point in telemetry.points("events_published_total")}
    assert values == {topics[0]: 1, topics[1]: 1, OTHER: 2}


async def test_request_reply_topics_share_one_attribute_value(telemetry, new_topic, memory_url):
    topic = new_topic()
    async with create_bus(memory_url, observers=[telemetry.observer(tracing=False)]) as server:
        await server.subscribe(topic, lambda e: {"ok": True})
        for _ in range(2):
            # A new client bus each time: a new reply topic each time.
            async with create_bus(memory_url, observers=[telemetry.observer(tracing=False)]) as client:
                await client.request(Event(topic=topic, payload={}), timeout=5)
    reply_topics = {
        attrs["topic"] for attrs, _ in telemetry.points("events_published_total") if attrs["topic"] != topic
    }
    assert reply_topics == {"dotmac.reply.{bus}"}


async def test_failed_publish_counts_as_error(telemetry, new_topic):
    topic = new_topic()
    url = f"memory://full-{topic}?max_queue_size=1&overflow=fail"
    async with create_bus(url, observers=[telemetry.observer(tracing=False)]) as bus:
        sub = await bus.subscribe(topic, lambda e: None, group="idle")
        await sub.stop()  # the group keeps queueing with nobody consuming
        await bus.publish(Event(topic=topic, payload={}))
        with pytest.raises(QueueFullError):
            await bus.publish(Event(topic=topic, payload={}))
    assert telemetry.value("events_published_total", topic=topic, outcome="success") == 1
    assert telemetry.value("events_published_total", topic=topic, outcome="error") == 1
    assert telemetry.value("event_publish_duration_seconds", topic=topic, outcome="error") == 1


async def test_metrics_off_records_spans_only(telemetry, new_topic, memory_url):
    topic = new_topic()
    async with create_bus(memory_url, observers=[telemetry.observer(metrics=False)]) as bus:
        await bus.publish(Event(topic=topic, payload={}))
    assert telemetry.points("events_published_total") == []
    assert len(telemetry.named(f"publish {topic}")) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tracer_provider": object()}, "tracer_provider must be an OpenTelemetry TracerProvider"),
        ({"meter_provider": "prom"}, "meter_provider must be an OpenTelemetry MeterProvider"),
        ({"propagator": {}}, "propagator must be an OpenTelemetry TextMapPropagator"),
        ({"max_tenants": -1}, "max_tenants must be an int >= 0"),
        ({"max_topics": 1.5}, "max_topics must be an int >= 0"),
    ],
)
def test_bad_options_are_configuration_errors(options, message):
    with pytest.raises(ConfigurationError, match=message):
        OtelObserver(**options)
