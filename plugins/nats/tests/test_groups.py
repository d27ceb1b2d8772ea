"""Consumer-group introspection (``bus.groups``, ``bus.topics``) against a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from nats.js.api import AckPolicy, ConsumerConfig

from dotmac.events import ConsumerOptions, Event, GroupInfo, create_bus
from dotmac.events.testing import Collector, wait_groups
from dotmac_events_nats.subjects import consumer_name

T = 15.0

BusUrl = Callable[..., str]


def topic() -> str:
    return f"t.{uuid.uuid4().hex[:8]}"


async def test_groups_come_sorted_by_name_without_members(bus_url: BusUrl) -> None:
    """What the kit's lag case leaves to the broker: pull consumers have neither member
    names nor a member count, JetStream gives no age for pending messages, and a group
    that starts from the beginning lags by the whole stream."""
    name = topic()
    n = 5
    async with create_bus(bus_url()) as bus:
        gate = asyncio.Event()
        await bus.subscribe(
            name,
            Collector(on_event=lambda e: gate.wait()),
            group="billing.eu",
            options=ConsumerOptions(prefetch_count=1),
        )
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(n)])
        await bus.subscribe(
            name,
            Collector(on_event=lambda e: gate.wait()),
            group="audit",
            options=ConsumerOptions(prefetch_count=1, start_from="earliest"),
        )
        infos = await wait_groups(
            bus, name, lambda g: [i.pending for i in g] == [1, 1], T, what="each group to take one"
        )
        assert infos == [
            GroupInfo(topic=name, group=group, members=(), member_count=None, pending=1, lag=n - 1)
            for group in ("audit", "billing.eu")
        ]
        gate.set()


async def test_groups_of_consumers_made_without_a_description_are_named(bus_url: BusUrl) -> None:
    """Consumers created before groups were described, and an operator's own consumer."""
    name = topic()
    async with create_bus(bus_url()) as bus:
        js = bus.transport.jetstream
        stream = bus_url.stream  # type: ignore[attr-defined]
        subject = f"{bus.transport.config.subject_prefix}.{name}"
        for durable in (consumer_name("a.b_c-d.e", name), "operator-tap"):
            await js.add_consumer(
                stream,
                ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, filter_subject=subject),
            )
        # On another topic: not a group of this one.
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=consumer_name("x", "other"),
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=f"{bus.transport.config.subject_prefix}.other",
            ),
        )
        await bus.publish_many([Event(topic=name, payload={}) for _ in range(2)])
        infos = await bus.groups(name)
        assert [(g.group, g.lag, g.pending) for g in infos] == [("a.b_c-d.e", 2, 0), ("operator-tap", 2, 0)]


async def test_a_long_group_name_is_read_from_the_description(bus_url: BusUrl) -> None:
    name = topic()
    group = "g." + "x" * 120  # the consumer name keeps only a head of it
    async with create_bus(bus_url()) as bus:
        await bus.subscribe(name, Collector(), group=group)
        (info,) = await bus.groups(name)
        assert info.group == group


async def test_topics_are_the_stream_subjects_and_the_groups_topics(bus_url: BusUrl) -> None:
    a, b = topic(), topic()
    async with create_bus(bus_url()) as bus:
        assert await bus.topics() == []
        await bus.subscribe(b, Collector(), group="billing")  # no events yet: listed for its group
        await bus.subscribe(f"{a}.x", Collector())  # broadcast only, nothing stored: not a topic yet
        await bus.publish_many([Event(topic=t, payload={}) for t in (a, f"{a}.dlq")])
        assert await bus.topics() == sorted([a, f"{a}.dlq", b])
