"""Consumer-group introspection (``bus.groups``) against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from dotmac.events import ConsumerOptions, Event, EventBus, TransportUnavailableError
from dotmac.events.testing import Collector, wait_groups
from dotmac_events_redis.testing import RedisServer

T = 15.0


async def test_members_are_named_and_a_group_made_outside_sees_the_stream(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    """What the kit's lag case leaves to the broker: Redis names the members (the
    subscriptions' consumers), dates the oldest pending entry, and a group created on
    the stream from its start lags by every retained entry."""
    name = f"t.{uuid.uuid4().hex[:8]}"
    n = 6
    async with buses() as bus:
        gate = asyncio.Event()
        sub = await bus.subscribe(
            name,
            Collector(on_event=lambda e: gate.wait()),
            group="billing",
            options=ConsumerOptions(prefetch_count=2),
        )
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(n)])
        (info,) = await wait_groups(bus, name, lambda g: g[0].pending == 2, T, what="two pending entries")
        assert sub.name in info.members
        assert info.oldest_pending_age is not None and 0 <= info.oldest_pending_age < T
        await raw.xgroup_create(f"{prefix}{name}", "audit", id="0")
        audit, _billing = await bus.groups(name)
        assert (audit.group, audit.lag, audit.pending, audit.members) == ("audit", n, 0, ())
        gate.set()


async def test_lag_is_unknown_after_unread_entries_were_deleted(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = f"t.{uuid.uuid4().hex[:8]}"
    async with buses() as bus:
        await raw.xgroup_create(f"{prefix}{name}", "g", id="0", mkstream=True)
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(5)])
        await raw.xreadgroup("g", "c", {f"{prefix}{name}": ">"}, count=1)
        _, second = await raw.xrange(f"{prefix}{name}", count=2)
        await raw.xdel(f"{prefix}{name}", second[0])
        (info,) = await bus.groups(name)
        # Redis cannot count past a hole in what the group has still to read: no guess.
        assert info.lag is None
        assert (info.pending, info.members) == (1, ("c",))


async def test_groups_of_an_unreachable_server_fail_precisely(
    buses: Callable[..., EventBus], private_server: Callable[..., RedisServer]
) -> None:
    server = private_server()
    async with buses(server.url) as bus:
        await bus.subscribe("orders", Collector(), group="g")
        server.stop()
        with pytest.raises(TransportUnavailableError, match="groups of 'orders'"):
            await bus.groups("orders")


async def test_topics_are_the_streams_of_the_key_prefix(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = f"a.{tag}", f"b.{tag}"
    try:
        async with buses() as bus:
            assert bus.capabilities.introspection
            assert await bus.topics() == []
            await bus.subscribe(b, Collector(), group="billing")  # the group creates the stream
            await bus.publish_many([Event(topic=t, payload={}) for t in (a, f"{a}.dlq", "dotmac.reply.x")])
            # Under the prefix but not topics of this bus: another type, another
            # namespace's stream, a stream whose name is not a topic.
            await raw.set(f"{prefix}plain.{tag}", "1")
            await raw.xadd(f"{prefix}tenant:{a}", {"x": "1"})
            await raw.xadd(f"{prefix}bad name", {"x": "1"})
            assert await bus.topics() == [a, f"{a}.dlq", b]
        async with buses(namespace="tenant") as bus:
            assert await bus.topics() == [a]
        # A key prefix with glob characters is matched literally (as a pattern,
        # "{prefix}*" would take in every stream above).
        async with buses(key_prefix=f"{prefix}*") as bus:
            assert await bus.topics() == []
    finally:
        keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
