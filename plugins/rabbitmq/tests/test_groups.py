"""Consumer-group introspection (``bus.groups``) against the real broker, over AMQP only."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import aio_pika
import pytest

from dotmac.events import (
    ConsumerOptions,
    Event,
    GroupInfo,
    TransportUnavailableError,
    UnsupportedOperationError,
    create_bus,
)
from dotmac.events.testing import Collector, wait_groups
from dotmac_events_rabbitmq import RabbitMQTransport
from dotmac_events_rabbitmq.groups import REGISTRY_SUFFIX
from dotmac_events_rabbitmq.testing import TcpRelay

pytestmark = pytest.mark.timeout(60)

T = 15.0


def topic() -> str:
    return f"rmq.groups.{uuid.uuid4().hex[:8]}"


async def test_another_bus_sees_the_groups_with_exact_lag_and_members(rabbitmq_url: str) -> None:
    name = topic()
    n, m = 11, 4
    async with create_bus(rabbitmq_url) as bus, create_bus(rabbitmq_url) as ops:
        assert ops.capabilities.introspection
        assert await ops.groups(name) == []

        seen = Collector()
        sub = await bus.subscribe(name, seen, group="billing.eu")
        await bus.subscribe(name, Collector(), group="billing.eu")  # a second member
        await bus.subscribe(name, Collector())  # broadcast: not a group
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(m)])
        await seen.wait(lambda c: c.total_calls >= 1, T)
        # The bus that reads has never subscribed: it finds the group in the registry.
        (info,) = await wait_groups(ops, name, lambda g: g[0].lag == 0, T, what="every event handed out")
        assert info == GroupInfo(
            topic=name, group="billing.eu", members=(), member_count=2, pending=None, lag=0
        )
        await sub.stop()
        for other in bus.subscriptions:
            await other.stop()

        # Nobody consumes: every event published now waits in the group's queue.
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(n)])
        await wait_groups(ops, name, lambda g: g[0].lag == n, T, what=f"a lag of {n}")
        (info,) = await ops.groups(name)
        assert (info.member_count, info.lag) == (0, n)

        # A member that takes 3 and holds them: they leave the ready count (AMQP does
        # not report them as pending).
        gate = asyncio.Event()
        held = Collector(on_event=lambda e: gate.wait())
        await bus.subscribe(name, held, group="billing.eu", options=ConsumerOptions(prefetch_count=3))
        (info,) = await wait_groups(ops, name, lambda g: g[0].lag == n - 3, T, what="three events handed out")
        assert (info.member_count, info.pending, info.oldest_pending_age) == (1, None, None)
        gate.set()
        await held.wait_count(n, T)
        await wait_groups(ops, name, lambda g: g[0].lag == 0, T, what="the member to catch up")


async def test_the_registry_lists_each_group_once_and_drops_deleted_queues(rabbitmq_url: str) -> None:
    name = topic()
    # Classic group queues: this broker closes connections that declare one new quorum
    # queue from several channels at once (INTERNAL_ERROR); the registry is classic anyway.
    classic = rabbitmq_url + ("&" if "?" in rabbitmq_url else "?") + "queue_type=classic"
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        async with create_bus(classic) as bus:
            transport = bus.transport
            assert isinstance(transport, RabbitMQTransport)
            registry = transport.config.queue_name(name, REGISTRY_SUFFIX)

            async def entries() -> int:
                queue = await channel.declare_queue(registry, passive=True)
                return queue.declaration_result.message_count

            await asyncio.gather(*(bus.subscribe(name, Collector(), group=g) for g in ("a", "b", "a", "b")))
            # Two members of a group subscribing at once may both write it; never more.
            written = await entries()
            assert 2 <= written <= 4
            async with create_bus(classic) as again:  # a restarted member finds its group
                await again.subscribe(name, Collector(), group="a")
            assert await entries() == written
            for sub in bus.subscriptions:
                await sub.stop()
            await channel.queue_delete(transport.config.queue_name(name, "b"))
    finally:
        await connection.close()
    async with create_bus(rabbitmq_url) as ops:
        assert [(g.group, g.member_count, g.lag) for g in await ops.groups(name)] == [("a", 0, 0)]


async def test_topics_cannot_be_listed_over_amqp(rabbitmq_url: str) -> None:
    async with create_bus(rabbitmq_url) as bus:
        with pytest.raises(UnsupportedOperationError, match="management API"):
            await bus.topics()


async def test_groups_of_an_unreachable_broker_fail_precisely(rabbitmq_url: str) -> None:
    """The connection runs through a TCP relay of the test's, cut while the bus is up."""
    relay = await TcpRelay.start(rabbitmq_url)
    name = topic()
    try:
        async with create_bus(relay.url(connect_timeout=1)) as bus:
            await bus.subscribe(name, Collector(), group="g")
            assert [g.group for g in await bus.groups(name)] == ["g"]
            relay.cut()
            with pytest.raises(TransportUnavailableError, match=f"groups of '{name}'"):
                await bus.groups(name)
            # The broker is back: the groups are answered again.
            await relay.restore()
            deadline = time.monotonic() + T
            while True:
                with contextlib.suppress(TransportUnavailableError):
                    if [g.group for g in await bus.groups(name)] == ["g"]:
                        break
                assert time.monotonic() < deadline, "groups not answered after the broker came back"
                await asyncio.sleep(0.05)
    finally:
        relay.close()
