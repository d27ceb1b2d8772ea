"""Starting and closing the transport against a real broker: an exchange of another
type is refused by name, a second start is a no-op, a closed transport refuses to
publish."""

from __future__ import annotations

import uuid

import aio_pika
import pytest

from dotmac.events import TransportError, create_bus
from dotmac.events.transport import Message
from dotmac_events_rabbitmq import RabbitMQTransport

pytestmark = pytest.mark.timeout(60)


def _transport(url: str) -> RabbitMQTransport:
    transport = create_bus(url).transport
    assert isinstance(transport, RabbitMQTransport)
    return transport


async def test_an_exchange_of_another_type_is_refused_by_name(rabbitmq_url: str) -> None:
    name = f"dotmac-test-fanout-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        fanout = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        try:
            transport = _transport(f"{rabbitmq_url}?exchange={name}")
            with pytest.raises(TransportError) as info:
                await transport.start()
            assert str(info.value) == f"exchange {name!r} exists and is not a durable topic exchange"
            # Nothing was left open: the transport can still be closed, and refuses work.
            await transport.close()
            with pytest.raises(TransportError, match="not started"):
                await transport.publish([Message(topic="orders", value=b"x")])
        finally:
            await fanout.delete()


async def test_start_twice_publish_nothing_and_publish_after_close(rabbitmq_url: str) -> None:
    transport = _transport(rabbitmq_url)
    await transport.start()
    connection = transport._connection
    assert connection is not None
    await transport.start()
    assert transport._connection is connection  # the second start kept the connection
    await transport.publish([])  # nothing to send: no error, no round trip
    await transport.close()
    await transport.close()  # closing twice is harmless
    with pytest.raises(TransportError, match="not started") as info:
        await transport.publish([Message(topic="orders", value=b"x")])
    assert info.value.retriable is False
