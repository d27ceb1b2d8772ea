"""Consumer-group introspection (``bus.groups``) against the real broker, over AMQP only."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import aio_pika
import pytest

from dotmac.events import (
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


async def test_members_are_counted_not_named(rabbitmq_url: str) -> None:
    """What the kit's lag case leaves to the broker: AMQP counts a group's consumers
    without naming them and does not count un-acknowledged messages."""
    name = topic()
    async with create_bus(rabbitmq_url) as bus, create_bus(rabbitmq_url) as ops:
        await bus.subscribe(name, Collector(), group="billing.eu")
        await bus.subscribe(name, Collector(), group="billing.eu")  # a second member
        (info,) = await wait_groups(
            ops, name, lambda g: len(g) == 1 and g[0].member_count == 2, T, what="two members"
        )
        assert info == GroupInfo(
            topic=name, group="billing.eu", members=(), member_count=2, pending=None, lag=0
        )
        for sub in bus.subscriptions:
            await sub.stop()
        await wait_groups(ops, name, lambda g: g[0].member_count == 0, T, what="no member left")


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
