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


async def test_lag_and_pending_are_exact_for_a_known_backlog(bus_url: BusUrl) -> None:
    name = topic()
    n, m = 11, 4
    async with create_bus(bus_url()) as bus:
        assert bus.capabilities.introspection
        assert await bus.groups(name) == []

        seen = Collector()
        sub = await bus.subscribe(name, seen, group="billing.eu")
        await bus.subscribe(name, Collector())  # broadcast: an ephemeral consumer, not a group
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(m)])
        await seen.wait_count(m, T)
        (info,) = await wait_groups(
            bus, name, lambda g: g[0].pending == 0, T, what="the acks of the first events"
        )
        assert info == GroupInfo(
            topic=name, group="billing.eu", members=(), member_count=None, pending=0, lag=0
        )
        await sub.stop()

        # Consumed m of n: the group lags by exactly n - m.
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(m, n)])
        (info,) = await bus.groups(name)
        assert (info.lag, info.pending) == (n - m, 0)

        # A member that takes 3 and holds them: 3 pending, the rest lag behind.
        gate = asyncio.Event()
        held = Collector(on_event=lambda e: gate.wait())
        await bus.subscribe(name, held, group="billing.eu", options=ConsumerOptions(prefetch_count=3))
        (info,) = await wait_groups(bus, name, lambda g: g[0].pending == 3, T, what="three pending events")
        assert (info.lag, info.oldest_pending_age, info.members) == (n - m - 3, None, ())
        # A second group that starts from the beginning sees the whole backlog.
        await bus.subscribe(
            name,
            Collector(on_event=lambda e: gate.wait()),
            group="audit",
            options=ConsumerOptions(prefetch_count=1, start_from="earliest"),
        )
        infos = await wait_groups(
            bus, name, lambda g: len(g) == 2 and g[0].pending == 1, T, what="audit to take one"
        )
        assert [(g.group, g.lag, g.pending) for g in infos] == [
            ("audit", n - 1, 1),
            ("billing.eu", n - m - 3, 3),
        ]
        gate.set()
        await held.wait_count(n - m, T)
        await wait_groups(
            bus,
            name,
            lambda g: [(i.lag, i.pending) for i in g] == [(0, 0), (0, 0)],
            T,
            what="both groups to catch up",
        )


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
