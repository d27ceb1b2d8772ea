"""Consuming: one channel per subscription, one queue and consumer per topic."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from dotmac.events.errors import ConfigurationError, TransportError
from dotmac.events.transport import Delivery, DeliverySink, Message, SubscriptionSpec, TransportSubscription

from .groups import register_group

if TYPE_CHECKING:
    from .transport import RabbitMQTransport

__all__ = [
    "BROKER_HEADERS",
    "KEY_HEADER",
    "PROPERTY_HEADERS",
    "RabbitMQDelivery",
    "RabbitMQSubscription",
    "decode_message",
    "foreign_position",
    "incoming_message",
]

log = logging.getLogger(__name__)

KEY_HEADER = "ce_partitionkey"
"""The event key travels in this header (the CloudEvents partitioning attribute). User
headers cannot take a ``ce_`` name, so it never clashes; it is removed on receive."""

BROKER_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-received-from",
        "x-stream-offset",
    }
)
"""Headers RabbitMQ (or its shovels and streams) adds; they never reach handlers."""

# Errors that mean "the channel or connection is gone", after which the broker has put
# every un-acknowledged message back in its queue by itself.
CHANNEL_GONE: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)

_REGISTRY_ERRORS: tuple[type[BaseException], ...] = (TransportError, *CHANNEL_GONE)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def decode_message(topic: str, body: bytes, raw_headers: Mapping[str, Any] | None) -> Message:
    """A received AMQP message as a core :class:`Message`: key out of its header,
    broker-added headers dropped, every value as text (plain clients may send others)."""
    headers: dict[str, str] = {}
    key: str | None = None
    for name, value in (raw_headers or {}).items():
        if name == KEY_HEADER:
            key = _text(value)
        elif name not in BROKER_HEADERS:
            headers[name] = _text(value)
    return Message(topic=topic, value=body, key=key, headers=headers)


PROPERTY_HEADERS = {
    "correlation_id": "amqp-correlation-id",
    "reply_to": "amqp-reply-to",
    "type": "amqp-type",
    "app_id": "amqp-app-id",
    "user_id": "amqp-user-id",
    "content_encoding": "amqp-content-encoding",
}
"""AMQP properties of a message without an envelope, and the headers they become."""


def incoming_message(incoming: AbstractIncomingMessage) -> Message:
    """A delivered AMQP message as a core :class:`Message`.

    A message with an envelope (a ``ce_id`` header, or a structured body) is
    :func:`decode_message`'s; a structured one whose content type is only the AMQP
    ``content_type`` property gets it as ``content-type``. A message without one (a
    plain client's) also gets what foreign intake needs: a position
    (:func:`foreign_position`), the ``timestamp`` property as its time, the routing key
    as its key when it has no key header, its ``content_type`` property as
    ``content-type`` and the properties of :data:`PROPERTY_HEADERS` as headers, where
    the headers do not name them already (in any case).
    """
    topic = incoming.routing_key or ""
    message = decode_message(topic, incoming.body, incoming.headers)
    headers = message.headers
    if "ce_id" in headers or _enveloped(headers):
        return message
    named = {name.lower() for name in headers}
    if _structured(incoming.content_type) and "content-type" not in named:
        # A structured event whose content type is only the AMQP property.
        return Message(
            topic, message.value, message.key, {**headers, "content-type": incoming.content_type or ""}
        )
    extra = dict(headers)
    if incoming.content_type and "content-type" not in named:
        extra["content-type"] = incoming.content_type
    for name, header in PROPERTY_HEADERS.items():
        value = getattr(incoming, name)
        if value and header not in named:
            extra[header] = _text(value)
    return Message(
        topic=topic,
        value=message.value,
        key=message.key if message.key is not None else topic or None,
        headers=extra,
        position=foreign_position(incoming),
        timestamp=_utc(incoming.timestamp),
    )


def _enveloped(headers: Mapping[str, str]) -> bool:
    """Whether a message without a ``ce_id`` header still has an envelope: ``ce_id``
    spelled in other case, or a structured body."""
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "ce_id" or (lowered == "content-type" and _structured(value)):
            return True
    return False


def _structured(content_type: str | None) -> bool:
    return content_type is not None and content_type.strip().lower().startswith("application/cloudevents")


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def foreign_position(incoming: AbstractIncomingMessage) -> str:
    """What a message without an envelope is known by, the same on every redelivery.

    Its ``message_id`` property when it has one. Otherwise ``sha256:`` and a hash of its
    exchange, routing key, body, headers (without those the broker adds) and
    ``timestamp`` property: two byte-identical messages without a ``message_id``
    share it, and so share an event id.
    """
    if incoming.message_id:
        return incoming.message_id
    digest = hashlib.sha256()
    stamp = _utc(incoming.timestamp)
    parts: list[Any] = [
        incoming.exchange or "",
        incoming.routing_key or "",
        sorted(
            (str(name), _text(value))
            for name, value in (incoming.headers or {}).items()
            if name not in BROKER_HEADERS
        ),
        None if stamp is None else stamp.isoformat(),
    ]
    digest.update(json.dumps(parts, ensure_ascii=False).encode("utf-8", "surrogateescape"))
    digest.update(b"\0")
    digest.update(incoming.body)
    return f"sha256:{digest.hexdigest()[:32]}"


def delivery_count(incoming: AbstractIncomingMessage) -> int:
    """1 on first delivery. Quorum queues count in ``x-delivery-count`` (absent the
    first time); classic queues only flag a redelivery."""
    count = (incoming.headers or {}).get("x-delivery-count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count + 1
    return 2 if incoming.redelivered else 1


class RabbitMQDelivery(Delivery):
    __slots__ = ("_incoming", "_on_settle", "_settled", "delivery_count", "message", "ordering_key")

    def __init__(
        self,
        message: Message,
        count: int,
        incoming: AbstractIncomingMessage,
        on_settle: Callable[[], None] | None = None,
    ) -> None:
        self.message = message
        self.delivery_count = count
        self.ordering_key: Hashable | None = message.key
        self._incoming = incoming
        self._on_settle = on_settle
        self._settled = False

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            await self._incoming.ack()
        except CHANNEL_GONE as exc:
            # The channel that delivered the message is closed, so the broker has
            # requeued it and delivers it again: a duplicate, never a loss.
            log.warning(
                "ack of an event of %s lost with its channel (%s); it will be delivered again",
                self.message.topic,
                type(exc).__name__,
            )
        finally:
            self._done()

    async def release(self) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            await self._incoming.nack(requeue=True)
        except CHANNEL_GONE:
            log.debug(
                "release of an event of %s: its channel is gone, the broker requeued it", self.message.topic
            )
        finally:
            self._done()

    def _done(self) -> None:
        # Only after the ack or nack went out: the subscription may close the channel next.
        if self._on_settle is not None:
            self._on_settle()


class RabbitMQSubscription(TransportSubscription):
    """A channel with ``basic.qos`` = prefetch, a queue bound per topic, one consumer each.

    The broker pushes up to ``prefetch`` un-acknowledged messages per consumer into a
    local buffer; one task hands them to the sink in arrival order.
    """

    def __init__(self, transport: RabbitMQTransport, spec: SubscriptionSpec, sink: DeliverySink) -> None:
        self._transport = transport
        self._spec = spec
        self._sink = sink
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._channel: AbstractRobustChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._pump: asyncio.Task[None] | None = None
        self._stopped = False
        self._outstanding = 0  # handed to the core, not yet acked or released
        self._closer: asyncio.Task[None] | None = None
        self.queues: list[str] = []
        cap = transport.config.prefetch_count
        # basic.qos takes a 16-bit count.
        self.prefetch = min(spec.prefetch if cap is None else min(spec.prefetch, cap), 65535)

    async def open(self) -> None:
        transport, spec, config = self._transport, self._spec, self._transport.config
        channel = await transport.open_channel()
        self._channel = channel
        try:
            await channel.set_qos(prefetch_count=self.prefetch)
            for topic in spec.topics:
                queue = await self._declare(channel, topic)
                await queue.bind(config.exchange, routing_key=topic)
                tag = await queue.consume(self._on_message, no_ack=False)
                self._consumers.append((queue, tag))
                self.queues.append(queue.name)
                if spec.group is not None:
                    await self._register(topic, spec.group)
        except BaseException:
            await self._close_channel()
            raise
        self._pump = asyncio.get_running_loop().create_task(
            self._run(), name=f"dotmac-events-rabbitmq:{spec.consumer_name}"
        )
        log.debug("subscribed %s to %s (group %s)", spec.consumer_name, ", ".join(self.queues), spec.group)

    async def _register(self, topic: str, group: str) -> None:
        # Only bus.groups() needs the registry: a failure is logged, the subscription stands.
        try:
            await register_group(self._transport, topic, group)
        except _REGISTRY_ERRORS as exc:
            log.warning(
                "group %s of %s could not be written to the group registry (%s); "
                "bus.groups() on another bus will not list it until it is",
                group,
                topic,
                type(exc).__name__,
            )

    async def _declare(self, channel: AbstractRobustChannel, topic: str) -> AbstractQueue:
        config = self._transport.config
        if self._spec.group is None:
            # Broadcast: a private queue that lives as long as the subscription.
            name = config.queue_name(topic, f"@broadcast.{uuid.uuid4().hex[:16]}")
            return await channel.declare_queue(
                name, durable=False, exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
            )
        name = config.queue_name(topic, self._spec.group)
        try:
            return await channel.declare_queue(
                name, durable=True, arguments={"x-queue-type": config.queue_type}
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"queue {name!r} exists with other settings than queue_type={config.queue_type!r}; "
                "use the queue type it was created with or delete the queue"
            ) from exc

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        if self._stopped:
            await self._give_back(incoming)
            return
        self._buffer.put_nowait(incoming)

    async def _run(self) -> None:
        while True:
            incoming = await self._buffer.get()
            try:
                incoming.channel  # noqa: B018 - raises once the channel is closed
            except aiormq.exceptions.ChannelInvalidStateError:
                # Buffered before the connection dropped: the broker has requeued it and
                # delivers it again on the restored channel, so skip this stale copy.
                continue
            message = incoming_message(incoming)
            topic = message.topic
            delivery = RabbitMQDelivery(message, delivery_count(incoming), incoming, self._settled_one)
            self._outstanding += 1
            try:
                await self._sink(delivery)
            except asyncio.CancelledError:
                # The core never took it (stop while it was full): give it back.
                await delivery.release()
                raise
            except Exception:
                # Never let one message stop the consumer: give it back and go on.
                log.exception("handing a message of %s to the bus failed; it is requeued", topic)
                await delivery.release()

    def _settled_one(self) -> None:
        self._outstanding -= 1
        if self._stopped and self._outstanding == 0 and self._closer is None:
            # The last delivery of a stopped subscription settled: its channel can go.
            self._closer = asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        await self._close_channel()
        self._transport.forget(self)

    @staticmethod
    async def _give_back(incoming: AbstractIncomingMessage) -> None:
        with contextlib.suppress(*CHANNEL_GONE):
            await incoming.nack(requeue=True)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for queue, tag in self._consumers:
            await self._transport.while_reachable(queue.cancel(tag), f"cancel of {queue.name}")
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        # Fetched but never handed to the core: back to the queue at once.
        while not self._buffer.empty():
            await self._give_back(self._buffer.get_nowait())
        # Deliveries the core still holds are acked or released on this channel later;
        # it closes with the last of them (or with the transport).
        if self._outstanding == 0 and self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._finish())
            await self._closer

    async def close(self) -> None:
        """Stop, then close the channel (the core has settled what it could by now)."""
        await self.stop()
        if self._closer is not None:
            await self._closer
        await self._close_channel()

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await self._transport.while_reachable(channel.close(), "closing a consumer channel")
