"""The core's Prometheus observer against a real prometheus_client registry."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dotmac.events import ConsumerOptions, Event, Message, create_bus, create_dotmac_observability_hooks
from dotmac.events.errors import ConfigurationError, QueueFullError
from dotmac.events.metrics import OTHER, LabelCap

FAST = ConsumerOptions(max_retries=2, backoff_base_ms=0, retry_policy="fixed")

SERIES = (
    "events_published_total",
    "events_consumed_total",
    "event_publish_duration_seconds",
    "event_consume_duration_seconds",
    "events_retried_total",
    "events_dlq_total",
)


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition text, keyed by (name, labels)."""
    text = generate_latest(registry).decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def test_generate_latest_has_every_series_with_exact_counts(new_topic, memory_url, outcomes):
    registry = CollectorRegistry()
    hooks = create_dotmac_observability_hooks(metrics_registry=registry)
    topic = new_topic()
    calls: dict[str, int] = {}

    def handle(event: Event) -> None:
        calls[event.event_id] = calls.get(event.event_id, 0) + 1
        if event.payload["kind"] == "flaky" and calls[event.event_id] <= 2:
            raise ConnectionError("try again")
        if event.payload["kind"] == "broken":
            raise ValueError("never works")

    async with create_bus(memory_url, observers=[hooks, outcomes]) as bus:
        await bus.subscribe(topic, handle, group="billing", options=FAST)
        for kind in ["ok", "ok", "ok", "flaky", "broken"]:
            await bus.publish(Event(topic=topic, payload={"kind": kind}))
        # An undecodable message: dead-lettered without a handler call.
        await bus.transport.publish([Message(topic=topic, value=b"\xff", headers={"ce_id": "x"})])
        await outcomes.wait(5, topic)
        await outcomes.wait_dead(2, topic)

    text = generate_latest(registry).decode()
    for name in SERIES:
        # Counters expose NAME{...}, histograms NAME_bucket{...}, NAME_count{...}.
        assert re.search(rf"^{name}(_bucket|_count)?{{", text, re.MULTILINE), name
    found = samples(registry)
    pub = {"topic": topic, "transport": "memory", "outcome": "success"}
    assert value(found, "events_published_total", **pub) == 5
    assert value(found, "event_publish_duration_seconds_count", **pub) == 5
    con = {"topic": topic, "transport": "memory", "consumer_group": "billing"}
    assert value(found, "events_consumed_total", **con, outcome="success") == 4
    assert value(found, "events_consumed_total", **con, outcome="dead_letter") == 1
    assert value(found, "event_consume_duration_seconds_count", **con, outcome="success") == 4
    assert value(found, "event_consume_duration_seconds_count", **con, outcome="dead_letter") == 1
    assert value(found, "event_consume_duration_seconds_bucket", **con, outcome="success", le="+Inf") == 4
    assert value(found, "events_retried_total", **con) == 4
    assert value(found, "events_dlq_total", **con, reason="max_retries") == 1
    assert value(found, "events_dlq_total", **con, reason="decode") == 1
    # Nothing else was counted: no error outcomes, no other reasons.
    dlq = {k: v for k, v in found.items() if k[0] == "events_dlq_total"}
    assert sum(dlq.values()) == 2
    consumed = {k: v for k, v in found.items() if k[0] == "events_consumed_total"}
    assert sum(consumed.values()) == 5


async def test_publish_errors_are_counted(new_topic):
    registry = CollectorRegistry()
    hooks = create_dotmac_observability_hooks(metrics_registry=registry)
    topic = new_topic()
    async with create_bus(f"memory://p-{topic}?max_queue_size=1&overflow=fail", observers=[hooks]) as bus:
        sub = await bus.subscribe(topic, lambda e: None, group="idle")
        await sub.stop()
        await bus.publish(Event(topic=topic, payload={}))
        with pytest.raises(QueueFullError):
            await bus.publish(Event(topic=topic, payload={}))
    found = samples(registry)
    labels = {"topic": topic, "transport": "memory"}
    assert value(found, "events_published_total", **labels, outcome="success") == 1
    assert value(found, "events_published_total", **labels, outcome="error") == 1


async def test_tenant_labels_are_capped(new_topic, memory_url, outcomes):
    registry = CollectorRegistry()
    hooks = create_dotmac_observability_hooks(metrics_registry=registry, tenant_metrics=True, max_tenants=2)
    topic = new_topic()
    async with create_bus(memory_url, observers=[hooks, outcomes]) as bus:
        await bus.subscribe(topic, lambda e: None)
        for tenant in ["t1", "t2", "t3", "t4", "t1", None]:
            await bus.publish(Event(topic=topic, payload={}, tenant_id=tenant))
        await outcomes.wait(6, topic)
    found = samples(registry)
    consumed = {
        dict(labels)["tenant"]: v for (name, labels), v in found.items() if name == "events_consumed_total"
    }
    assert consumed == {"t1": 2.0, "t2": 1.0, OTHER: 2.0, "": 1.0}


async def test_untrusted_tenant_of_an_undecodable_message_is_not_a_label(new_topic, memory_url, outcomes):
    registry = CollectorRegistry()
    hooks = create_dotmac_observability_hooks(metrics_registry=registry, tenant_metrics=True)
    topic = new_topic()

    async with create_bus(memory_url, observers=[hooks, outcomes]) as bus:
        await bus.subscribe(topic, lambda e: None)
        bad = {"ce_id": "x", "ce_tenantid": "../other tenant"}
        good = {"ce_id": "y", "ce_tenantid": "acme"}
        await bus.transport.publish(
            [
                Message(topic=topic, value=b"\xff", headers=bad),
                Message(topic=topic, value=b"\xff", headers=good),
            ]
        )
        await outcomes.wait_dead(2, topic)
    found = samples(registry)
    tenants = {dict(labels)["tenant"] for (name, labels), _ in found.items() if name == "events_dlq_total"}
    assert tenants == {OTHER, "acme"}


async def test_reply_topics_collapse_into_one_label(new_topic, memory_url, outcomes):
    registry = CollectorRegistry()
    hooks = create_dotmac_observability_hooks(metrics_registry=registry)
    topic = new_topic()
    async with create_bus(memory_url, observers=[hooks]) as server:
        await server.subscribe(topic, lambda e: {"ok": True})
        for _ in range(3):
            async with create_bus(memory_url, observers=[hooks]) as client:
                await client.request(Event(topic=topic, payload={}), timeout=5)
    found = samples(registry)
    topics = {
        dict(labels)["topic"] for (name, labels), _ in found.items() if name == "events_published_total"
    }
    assert topics == {topic, "dotmac.reply.{bus}"}
    assert (
        value(
            found, "events_published_total", topic="dotmac.reply.{bus}", transport="memory", outcome="success"
        )
        == 3
    )


def test_one_observer_per_registry():
    registry = CollectorRegistry()
    first = create_dotmac_observability_hooks(metrics_registry=registry)
    assert create_dotmac_observability_hooks(metrics_registry=registry) is first
    with pytest.raises(ConfigurationError, match="other settings"):
        create_dotmac_observability_hooks(metrics_registry=registry, tenant_metrics=True)
    # A second registry gets its own series.
    assert create_dotmac_observability_hooks(metrics_registry=CollectorRegistry()) is not first


def test_series_registered_by_someone_else_is_a_configuration_error():
    registry = CollectorRegistry()
    Counter("events_published_total", "not ours", registry=registry)
    with pytest.raises(ConfigurationError, match="already exist in this registry"):
        create_dotmac_observability_hooks(metrics_registry=registry)


@pytest.mark.parametrize("limit", [-1, 1.5, "10", True])
def test_bad_caps_are_configuration_errors(limit):
    with pytest.raises(ConfigurationError, match="must be an int >= 0"):
        create_dotmac_observability_hooks(metrics_registry=CollectorRegistry(), max_topics=limit)


def test_label_cap_bounds_distinct_values():
    cap = LabelCap(3)
    assert [cap(f"v{i}") for i in range(1000)][:4] == ["v0", "v1", "v2", OTHER]
    assert len(cap) == 3
    assert cap("v1") == "v1"
    assert cap(None) == ""
    assert LabelCap(0)("anything") == OTHER


def test_namespace_prefixes_every_series():
    registry = CollectorRegistry()
    create_dotmac_observability_hooks(metrics_registry=registry, namespace="shop")
    hooks = create_dotmac_observability_hooks(metrics_registry=registry, namespace="shop")
    hooks.published.labels("t", "memory", "success").inc()
    assert "shop_events_published_total" in generate_latest(registry).decode()
