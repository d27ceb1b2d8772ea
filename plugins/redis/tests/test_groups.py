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


async def test_lag_and_pending_are_exact_for_a_known_backlog(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = f"t.{uuid.uuid4().hex[:8]}"
    n, m = 11, 4
    async with buses() as bus:
        assert bus.capabilities.introspection
        assert await bus.groups(name) == []  # no stream yet: no groups

        seen = Collector()
        sub = await bus.subscribe(name, seen, group="billing")
        await bus.subscribe(name, Collector())  # broadcast reads without a group: not listed
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(m)])
        await seen.wait_count(m, T)
        (info,) = await wait_groups(
            bus, name, lambda g: g[0].pending == 0, T, what="the acks of the first events"
        )
        assert (info.topic, info.group, info.lag, info.oldest_pending_age) == (name, "billing", 0, None)
        assert sub.name in info.members
        await sub.stop()

        # Consumed m of n: the group lags by exactly n - m.
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(m, n)])
        (info,) = await bus.groups(name)
        assert (info.lag, info.pending) == (n - m, 0)

        # A member that takes 3 and holds them: 3 pending, the rest lag behind.
        gate = asyncio.Event()
        held = Collector(on_event=lambda e: gate.wait())
        await bus.subscribe(name, held, group="billing", options=ConsumerOptions(prefetch_count=3))
        (info,) = await wait_groups(bus, name, lambda g: g[0].pending == 3, T, what="three pending entries")
        assert info.lag == n - m - 3
        assert info.oldest_pending_age is not None and 0 <= info.oldest_pending_age < T
        # A second group on the same stream sees the whole retained backlog.
        await raw.xgroup_create(f"{prefix}{name}", "audit", id="0")
        infos = await bus.groups(name)
        assert [(g.group, g.lag, g.pending, g.members) for g in infos][0] == ("audit", n, 0, ())
        gate.set()
        await held.wait_count(n - m, T)
        await wait_groups(
            bus, name, lambda g: (g[1].lag, g[1].pending) == (0, 0), T, what="the second member to catch up"
        )


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
