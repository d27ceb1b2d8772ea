"""The messaging semantic conventions' metric names, recorded beside the seed's series."""

from __future__ import annotations

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac_events_otel import SEMCONV_METRIC_NAMES


async def test_convention_series_count_what_the_seed_series_count(telemetry, new_topic, memory_url, outcomes):
    topic = new_topic()

    def handle(event: Event) -> None:
        if event.payload["kind"] == "broken":
            raise ValueError("never works")

    async with create_bus(memory_url, observers=[telemetry.observer(), outcomes]) as bus:
        await bus.subscribe(topic, handle, group="billing", options=ConsumerOptions(max_retries=0))
        for kind in ("ok", "ok", "broken"):
            await bus.publish(Event(topic=topic, payload={"kind": kind}))
        await outcomes.wait(3, topic)
    common = {"messaging.system": "memory", "messaging.destination.name": topic}
    sent = {**common, "messaging.operation.name": "publish"}
    assert telemetry.value("messaging.client.sent.messages", **sent) == 3
    assert telemetry.value("messaging.client.operation.duration", **sent) == 3
    processed = {**common, "messaging.operation.name": "process", "messaging.consumer.group.name": "billing"}
    assert telemetry.value("messaging.client.consumed.messages", **processed) == 3
    assert telemetry.value("messaging.process.duration", **processed) == 3
    failed = [
        attrs for attrs, _ in telemetry.points("messaging.client.consumed.messages") if "error.type" in attrs
    ]
    assert [attrs["error.type"] for attrs in failed] == ["ValueError"]
    assert (
        telemetry.value("messaging.client.consumed.messages", **processed, **{"error.type": "ValueError"})
        == 1
    )
    # Each convention series counts what its seed series counts.
    for seed, convention in SEMCONV_METRIC_NAMES.items():
        seed_total = sum(p.value if hasattr(p, "value") else p.count for _, p in telemetry.points(seed))
        convention_total = sum(
            p.value if hasattr(p, "value") else p.count for _, p in telemetry.points(convention)
        )
        assert seed_total == convention_total, seed
