"""Consumer lag as a gauge: LagSampler feeding prometheus_client and OpenTelemetry."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dotmac.events import Event, create_bus
from dotmac.events.errors import ConfigurationError
from dotmac.events.metrics import OTHER, LagSampler, register_lag_collector
from dotmac.events.testing import Collector


def lag_samples(
    registry: CollectorRegistry, name: str = "events_consumer_lag"
) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name:
                out[(sample.labels["topic"], sample.labels["consumer_group"])] = sample.value
    return out


async def test_lag_reaches_both_metric_paths_exactly(new_topic: Any, memory_url: str, telemetry: Any) -> None:
    topic = new_topic()
    n, m = 9, 4
    async with create_bus(memory_url) as bus:
        seen = Collector()
        sub = await bus.subscribe(topic, seen, group="billing")
        await bus.subscribe(topic, Collector(), group="audit")
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(m)])
        await seen.wait_count(m, 5)
        await sub.stop()
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(m, n)])

        sampler = LagSampler(bus, topics=[topic], max_groups=1)
        registry = CollectorRegistry()
        register_lag_collector(sampler, registry, namespace="shop")
        observer = telemetry.observer()
        observer.observe_lag(sampler)
        assert lag_samples(registry, "shop_events_consumer_lag") == {}  # nothing asked yet

        await sampler.refresh()
        audit = next(g for g in sampler.groups[topic] if g.group == "audit")
        # "audit" sorts first and takes the one group label allowed; billing is __other__.
        expected = {(topic, "audit"): audit.lag, (topic, OTHER): n - m}
        assert lag_samples(registry, "shop_events_consumer_lag") == expected
        points = {
            (attrs["topic"], attrs["consumer_group"]): point.value
            for attrs, point in telemetry.points("events_consumer_lag")
        }
        assert points == expected

    # The bus is gone: its figures go too instead of staying stale.
    await sampler.refresh()
    assert lag_samples(registry, "shop_events_consumer_lag") == {}
    assert topic in sampler.errors


async def test_sampler_watches_the_bus_group_subscriptions(new_topic: Any, memory_url: str) -> None:
    grouped, broadcast = new_topic(), new_topic()
    async with create_bus(memory_url) as bus:
        await bus.subscribe(grouped, Collector(), group="g")
        await bus.subscribe(broadcast, Collector())
        async with LagSampler(bus, interval=0.05) as sampler:
            assert sampler.topics() == [grouped]
            assert [g.group for g in sampler.groups[grouped]] == ["g"]
            assert sampler.lag() == {(grouped, "g"): 0}


@pytest.mark.parametrize("interval", [0, -1, True, "5"])
def test_sampler_interval_is_checked(interval: Any) -> None:
    with pytest.raises(ConfigurationError, match="interval"):
        LagSampler(create_bus("memory://"), interval=interval)
