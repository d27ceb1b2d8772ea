"""The ``amqp://`` transport: a durable topic exchange, one queue per consumer group.

Every event is published to the bus's topic exchange with the topic as routing key
and waits for the broker's publisher confirm. A consumer group is a durable queue
(quorum by default) bound to the topic; its members are competing consumers. A
broadcast subscription is an exclusive, auto-deleted queue of its own. Dead-letter
topics get a retained classic queue, which :meth:`RabbitMQTransport.read` lists
without consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import warnings
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, AbstractRobustExchange

from dotmac.events.dlq import LEDGER_REPLAYED_AT
from dotmac.events.dlq_headers import DLQ_ORIGINAL_TOPIC
from dotmac.events.errors import (
    PublishError,
    TransportError,
    TransportUnavailableError,
    UnsupportedOperationError,
    ValidationError,
)
from dotmac.events.transport import (
    Capabilities,
    DeliverySink,
    GroupInfo,
    Message,
    SubscriptionSpec,
    Transport,
    TransportSubscription,
)

from ._consumer import CHANNEL_GONE, KEY_HEADER, RabbitMQSubscription, decode_message
from .config import RabbitMQConfig
from .groups import list_groups

__all__ = ["CAPABILITIES", "DLQ_MARKER_HEADER", "RETAINED_SUFFIX", "RabbitMQTransport"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    persistent=True,
    consumer_groups=True,
    partitions=False,
    ordering="topic",
    request_reply=True,
    replay_backlog=False,
    readable=True,
    restartable=True,
    batch_publish=True,
    introspection=True,
)

RETAINED_SUFFIX = "@retained"
DLQ_MARKER_HEADER = DLQ_ORIGINAL_TOPIC
"""The core adds this header to every dead letter; a topic that receives one gets a
retained queue, whatever its name, so dead letters are never dropped as unroutable."""


_CONNECT_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, OSError, *CHANNEL_GONE)
_GROUPS_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, *CHANNEL_GONE)
_CLOSE_ERRORS = _GROUPS_ERRORS  # a closing step that timed out, or whose channel is gone


def _is_retained_topic(message: Message) -> bool:
    # Dead letters, and the replay ledger the core keeps beside a dead-letter topic.
    headers = message.headers
    return message.topic.endswith(".dlq") or DLQ_MARKER_HEADER in headers or LEDGER_REPLAYED_AT in headers


class RabbitMQTransport(Transport):
    """A robust connection (aio-pika reconnects and restores queues and consumers),
    one confirming publish channel and one channel per subscription."""

    name = "rabbitmq"
    capabilities = CAPABILITIES

    def __init__(self, config: RabbitMQConfig) -> None:
        self.config = config
        self.default_max_deliveries = config.max_deliveries
        self.unroutable = 0
        """Events the broker returned because no queue was bound for their topic."""
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._retained: set[str] = set()
        self._retained_lock = asyncio.Lock()
        self._subscriptions: set[RabbitMQSubscription] = set()
        self.known_groups: set[tuple[str, str]] = set()
        """(topic, group) pairs this transport subscribed or found in a registry."""
        self._start_lock = asyncio.Lock()
        self._lost: asyncio.Future[None] | None = None  # resolved when the connection drops
        self._closed = False
        self._closing = asyncio.Event()  # set by close(): wakes publishes waiting to re-send

    def __repr__(self) -> str:
        c = self.config
        return f"<RabbitMQTransport {c.host}:{c.effective_port} vhost={c.virtual_host!r}>"

    def describe(self) -> Mapping[str, object]:
        return self.config.describe()

    # -- lifecycle -------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        if not c.ssl:
            return None
        context = ssl.create_default_context(cafile=c.ssl_cafile)
        if c.ssl_certfile is not None:
            context.load_cert_chain(c.ssl_certfile, c.ssl_keyfile)
        if c.ssl_insecure:
            log.warning("RabbitMQ TLS certificate and host name checks are OFF (ssl_insecure=True)")
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def start(self) -> None:
        async with self._start_lock:
            if self._connection is not None:
                return
            c = self.config
            properties: dict[str, Any] = {}
            if c.connection_name:
                properties["connection_name"] = c.connection_name
            try:
                connection = await asyncio.wait_for(
                    aio_pika.connect_robust(
                        host=c.host,
                        port=c.effective_port,
                        login=c.username,
                        password=c.resolved_password(),
                        virtualhost=c.virtual_host,
                        ssl=c.ssl,
                        ssl_context=self._ssl_context(),
                        client_properties=properties,
                        heartbeat=c.heartbeat,
                        reconnect_interval=c.reconnect_interval,
                    ),
                    c.connect_timeout,
                )
            except _CONNECT_ERRORS as exc:
                # The exception text can hold the URL with its password: name the type only.
                raise TransportUnavailableError(
                    f"cannot connect to RabbitMQ at {c.host}:{c.effective_port} "
                    f"vhost {c.virtual_host!r}: {type(exc).__name__}"
                ) from None
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
                exchange = await channel.declare_exchange(
                    c.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
            except BaseException as exc:
                await connection.close()
                if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                    raise TransportError(
                        f"exchange {c.exchange!r} exists and is not a durable topic exchange"
                    ) from exc
                raise
            self._lost = asyncio.get_running_loop().create_future()
            connection.close_callbacks.add(self._on_connection_lost)
            self._connection, self._channel, self._exchange = connection, channel, exchange
            log.info("connected to RabbitMQ %s", self.describe())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        subscriptions, self._subscriptions = list(self._subscriptions), set()
        for sub in subscriptions:
            await sub.close()
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None:
            # aio-pika cancels its reconnect loop here; the broker, if it is gone, is
            # given connect_timeout to answer connection.close, never more.
            try:
                await asyncio.wait_for(connection.close(), self.config.connect_timeout)
            except _CLOSE_ERRORS as exc:
                log.debug("closing the RabbitMQ connection failed: %s", type(exc).__name__)

    async def while_reachable(self, operation: Awaitable[object], what: str) -> None:
        """Run a closing step that needs the broker (a ``basic.cancel``, a ``channel.close``)
        only while the connection is up, and for ``connect_timeout`` at most.

        aio-pika holds such a step until its reconnect loop has restored the
        connection, which may be never. While the connection is down the broker has
        dropped its channels and consumers and requeued their unacknowledged messages by
        itself, so there is nothing to do; a step that times out is given up the same way.
        """
        connection = self._connection
        if connection is None or not connection.connected.is_set() or connection.is_closed:
            if asyncio.iscoroutine(operation):
                operation.close()
            log.debug("%s skipped: the RabbitMQ connection is down", what)
            return
        try:
            await asyncio.wait_for(operation, self.config.connect_timeout)
        except _CLOSE_ERRORS as exc:
            log.debug("%s failed (%s): its channel is gone", what, type(exc).__name__)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._connection is not None and not self._closed:
            _warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)

    def _live_connection(self) -> AbstractRobustConnection:
        if self._connection is None or self._closed:
            raise TransportError("the RabbitMQ transport is not started", retriable=False)
        return self._connection

    def forget(self, sub: RabbitMQSubscription) -> None:
        self._subscriptions.discard(sub)

    async def open_channel(self) -> AbstractRobustChannel:
        channel: AbstractRobustChannel = await self._live_connection().channel()
        return channel

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        self._live_connection()
        for message in messages:
            _check_key(message)
        if any(_is_retained_topic(m) for m in messages):
            await self._ensure_retained({m.topic for m in messages if _is_retained_topic(m)})
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # set by the first failure: how long to keep trying
        pending = list(messages)
        redeclared: set[str] = set()
        attempt = 0
        while True:
            results = await self._attempt(pending)
            failed: list[Message] = []
            lost_letters: list[Message] = []
            for message, result in zip(pending, results, strict=True):
                if isinstance(result, aiormq.exceptions.DeliveryError):
                    raise PublishError(
                        f"RabbitMQ refused an event of {message.topic!r} (basic.nack)", retriable=True
                    ) from result
                if isinstance(result, CHANNEL_GONE):
                    failed.append(message)
                elif isinstance(result, BaseException):
                    raise result
                elif result is False:
                    if not _is_retained_topic(message):
                        self._unroutable(message)
                    elif message.topic not in redeclared:
                        lost_letters.append(message)
                    else:
                        raise PublishError(
                            f"no queue takes the dead letters of {message.topic!r}, even after "
                            "declaring its retained queue again",
                            retriable=True,
                        )
            if lost_letters:
                # Someone deleted a retained queue under us: declare it again and re-send,
                # so that a dead letter is never dropped as unroutable.
                topics = {m.topic for m in lost_letters}
                redeclared |= topics
                self._retained -= topics
                await self._ensure_retained(topics)
                failed.extend(lost_letters)
            if not failed:
                return
            # The connection dropped before these were confirmed: send them again once
            # it is back (an event confirmed but not reported may arrive twice, never not at all).
            if deadline is None:
                deadline = loop.time() + self.config.publish_timeout
            remaining = deadline - loop.time()
            if self._closed:
                raise TransportUnavailableError(self._closed_unconfirmed(len(failed)))
            if remaining <= 0:
                raise TransportUnavailableError(self._not_confirmed(len(failed)))
            attempt += 1
            log.debug("re-publishing %d unconfirmed event(s), attempt %d", len(failed), attempt)
            channel = self._channel
            assert channel is not None
            # Back off, then wait for the restored channel; close() ends either wait.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), min(0.05 * 2**attempt, 1.0, remaining))
            if not self._closed:
                waits = {asyncio.ensure_future(channel.ready()), asyncio.ensure_future(self._closing.wait())}
                try:
                    await asyncio.wait(
                        waits, timeout=max(deadline - loop.time(), 0.001), return_when="FIRST_COMPLETED"
                    )
                finally:
                    for waiting in waits:
                        waiting.cancel()
            if self._closed:
                raise TransportUnavailableError(self._closed_unconfirmed(len(failed)))
            pending = failed

    async def _attempt(self, pending: list[Message]) -> list[bool | BaseException]:
        """Publish ``pending`` once: per message ``True`` (confirmed), ``False`` (returned
        unroutable) or the error; a connection error for those whose confirm the
        connection took with it when it dropped."""
        loop = asyncio.get_running_loop()
        lost = self._lost
        assert lost is not None
        tasks = [loop.create_task(self._publish_one(m)) for m in pending]
        everything: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
        # Wait for every confirm, or for the connection to drop (its confirms vanish with
        # it). No deadline on a live connection: thousands of concurrent publishes queue
        # behind each other here, and a broker that blocks publishers (memory or disk
        # alarm) holds confirms back until it recovers; heartbeats notice a dead peer.
        waiting: set[asyncio.Future[Any]] = {everything, lost}
        await asyncio.wait(waiting, return_when="FIRST_COMPLETED")
        if not everything.done():
            for task in tasks:
                task.cancel()
            await asyncio.wait({everything})
        results: list[bool | BaseException] = []
        for task in tasks:
            if task.cancelled():
                results.append(ConnectionError("the connection dropped before the confirm"))
            else:
                results.append(task.exception() or task.result())
        return results

    def _on_connection_lost(self, *_args: Any) -> None:
        lost, self._lost = self._lost, asyncio.get_running_loop().create_future()
        if lost is not None and not lost.done():
            lost.set_result(None)

    def _not_confirmed(self, count: int) -> str:
        c = self.config
        return (
            f"RabbitMQ at {c.host}:{c.effective_port} did not confirm {count} event(s) "
            f"within publish_timeout={c.publish_timeout}s"
        )

    def _closed_unconfirmed(self, count: int) -> str:
        c = self.config
        return (
            f"the bus was closed before RabbitMQ at {c.host}:{c.effective_port} confirmed "
            f"{count} event(s); they may or may not have arrived"
        )

    async def _publish_one(self, message: Message) -> bool:
        """``True`` when confirmed and routed, ``False`` when the broker returned it."""
        exchange = self._exchange
        if exchange is None:
            raise aiormq.exceptions.ChannelInvalidStateError("not connected")
        headers: dict[str, Any] = dict(message.headers)
        if message.key is not None:
            headers[KEY_HEADER] = message.key
        result = await exchange.publish(
            aio_pika.Message(
                message.value,
                headers=headers,
                content_type=message.headers.get("content-type"),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=message.topic,
            mandatory=True,
        )
        return not isinstance(result, aiormq.abc.DeliveredMessage)

    def _unroutable(self, message: Message) -> None:
        self.unroutable += 1
        if self.config.unroutable == "error":
            raise PublishError(
                f"no queue is bound for topic {message.topic!r}: RabbitMQ dropped the event "
                "(unroutable='error')",
                retriable=False,
            )
        log.debug("no queue bound for %s: RabbitMQ dropped the event", message.topic)

    async def _ensure_retained(self, topics: set[str]) -> None:
        missing = topics - self._retained
        if not missing:
            return
        async with self._retained_lock:
            for topic in sorted(missing - self._retained):
                assert self._channel is not None
                name = self.config.queue_name(topic, RETAINED_SUFFIX)
                # Classic, not quorum: read() returns what it fetched to the queue, which
                # a quorum queue would count as failed deliveries.
                queue = await self._channel.declare_queue(
                    name, durable=True, arguments={"x-queue-type": "classic"}
                )
                await queue.bind(self.config.exchange, routing_key=topic)
                self._retained.add(topic)
                log.debug("retained queue %s bound to %s", name, topic)

    # -- consuming -------------------------------------------------------------------------
    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        self._live_connection()
        if spec.group is not None and spec.start_from == "earliest":
            log.debug(
                "start_from='earliest' for group %s: a new RabbitMQ queue starts empty; "
                "an existing one keeps its backlog either way",
                spec.group,
            )
        sub = RabbitMQSubscription(self, spec, sink)
        await sub.open()
        self._subscriptions.add(sub)
        return sub

    async def groups(self, topic: str) -> list[GroupInfo]:
        """The groups of ``topic`` in its registry queue, and those this transport knows,
        with the ready messages (lag) and consumers of their queues (see ``groups.py``)."""
        self._live_connection()
        try:
            # Bounded: a channel asked for while the connection is being restored waits.
            return await asyncio.wait_for(list_groups(self, topic), self.config.connect_timeout)
        except _GROUPS_ERRORS as exc:
            raise TransportUnavailableError(
                f"RabbitMQ did not answer for the groups of {topic!r}: {type(exc).__name__}"
            ) from exc
        except RuntimeError as exc:
            # aio-pika refuses a channel while the connection is being restored.
            connection = self._connection
            if connection is None or (connection.connected.is_set() and not connection.is_closed):
                raise
            raise TransportUnavailableError(
                f"RabbitMQ did not answer for the groups of {topic!r}: the connection is being restored"
            ) from exc

    async def topics(self) -> list[str]:
        raise UnsupportedOperationError(
            "the rabbitmq transport cannot list topics: AMQP lists neither queues nor "
            "bindings (the management API does)"
        )

    async def publish_internal(self, message: aio_pika.Message, routing_key: str) -> None:
        """Publish a message of the transport's own (a registry entry) and wait for its confirm."""
        exchange = self._exchange
        if exchange is None:
            raise TransportError("the RabbitMQ transport is not started", retriable=False)
        result = await exchange.publish(message, routing_key=routing_key, mandatory=True)
        if isinstance(result, aiormq.abc.DeliveredMessage):  # returned: nothing bound
            raise PublishError(f"RabbitMQ routed no queue for {routing_key!r}", retriable=True)

    async def read(self, topic: str, *, limit: int = 100) -> list[Message]:
        """The oldest ``limit`` messages of ``topic``'s retained queue, left in place.

        Fetched with ``basic.get`` and given back by closing the channel, which puts
        them back at their positions. Topics without a retained queue read as empty.
        """
        if limit <= 0:
            return []
        channel = await self.open_channel()
        try:
            name = self.config.queue_name(topic, RETAINED_SUFFIX)
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return []
            out: list[Message] = []
            while len(out) < limit:
                incoming = await queue.get(no_ack=False, fail=False)
                if incoming is None:
                    break
                out.append(decode_message(topic, incoming.body, incoming.headers))
            return out
        finally:
            if not channel.is_closed:
                await channel.close()


def _check_key(message: Message) -> None:
    """Refuse an event whose ``partitionkey`` extension and key differ: both travel in
    the one ``ce_partitionkey`` header, and the key would replace the extension silently."""
    extension = message.headers.get(KEY_HEADER)
    if extension is not None and message.key is not None and extension != message.key:
        raise ValidationError(
            f"an event of {message.topic!r} has the key {message.key!r} and the partitionkey extension "
            f"{extension!r}; on RabbitMQ both travel in the {KEY_HEADER} header, so they must be equal "
            "(or one of them unset)",
            field="key",
        )
