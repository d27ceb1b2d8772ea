"""The contract between the core and a transport plugin.

A transport moves :class:`Message` objects (already encoded bytes plus string
headers) and hands received ones to the core as :class:`Delivery` objects. Retries,
dead-lettering, decoding, request-reply and observability live in the core, so a
transport only has to store, fetch, acknowledge and release.

Read ``docs/adapters.md`` for a walk-through; run
``dotmac.events.testing.TransportConformance`` to prove an implementation.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Literal

from attrs import Factory, field, frozen

from .wire import Message

__all__ = [
    "Capabilities",
    "Delivery",
    "DeliverySink",
    "GroupInfo",
    "Message",
    "StartFrom",
    "SubscriptionSpec",
    "Transport",
    "TransportSubscription",
]

StartFrom = Literal["latest", "earliest"]


@frozen
class Capabilities:
    """What a transport can do. The conformance kit skips what is ``False``.

    - ``persistent``: events survive the process (and, with broker persistence, a restart).
    - ``consumer_groups``: ``group=`` splits events between members.
    - ``partitions``: topics are partitioned; ordering holds per key.
    - ``ordering``: ``"key"`` (per key), ``"topic"`` (per topic) or ``"none"``.
    - ``request_reply``: ``bus.request()`` works (the core builds it on broadcast).
    - ``replay_backlog``: a new subscription with ``start_from="earliest"`` sees events
      published before it existed.
    - ``readable``: :meth:`Transport.read` lists a topic's retained events (DLQ listing).
    - ``restartable``: the broker can restart under a live bus without losing acked events.
    - ``batch_publish``: :meth:`Transport.publish` sends several messages in one round trip.
    - ``introspection``: :meth:`Transport.groups` reports consumer groups and their lag,
      and :meth:`Transport.topics` lists the topics (or raises
      :class:`~dotmac.events.errors.UnsupportedOperationError` where the broker cannot
      list them: RabbitMQ over AMQP).
    """

    persistent: bool = False
    consumer_groups: bool = True
    partitions: bool = False
    ordering: Literal["key", "topic", "none"] = "topic"
    request_reply: bool = True
    replay_backlog: bool = False
    readable: bool = False
    restartable: bool = False
    batch_publish: bool = False
    introspection: bool = False


@frozen
class GroupInfo:
    """One consumer group of one topic, as :meth:`Transport.groups` reports it.

    - ``members``: names of the group's consumers the broker knows (live ones, and on
      Redis also dead ones still holding pending entries).
    - ``pending``: events delivered to a member and not yet acknowledged; ``None`` when
      the broker does not say (RabbitMQ over AMQP).
    - ``lag``: events of the topic the group has not been handed yet; ``None`` when the
      broker cannot tell (a Redis group on a trimmed stream, say).
    - ``oldest_pending_age``: seconds since the oldest pending event was handed out,
      ``None`` when nothing is pending or the broker does not say.
    - ``member_count``: how many consumers the group has. ``len(members)`` unless given:
      a broker may count consumers it does not name (RabbitMQ), or know neither
      (NATS pull consumers: ``None``).
    """

    topic: str
    group: str
    members: tuple[str, ...] = ()
    pending: int | None = 0
    lag: int | None = None
    oldest_pending_age: float | None = None
    member_count: int | None = field(default=Factory(lambda self: len(self.members), takes_self=True))


class Delivery(abc.ABC):
    """One received message, owned by the core until it is acked or released.

    ``delivery_count`` is 1 the first time the broker hands the message out and grows
    with each redelivery (Redis pending-entry reclaims, memory releases). Transports
    that cannot count redeliveries report 1.

    ``ordering_key`` groups deliveries that must be handled one after another
    (the partition on Kafka, the event key elsewhere); ``None`` means no constraint.
    """

    __slots__ = ()

    message: Message
    delivery_count: int
    ordering_key: Hashable | None

    @abc.abstractmethod
    async def ack(self) -> None:
        """The message was handled or dead-lettered; it must not be delivered again."""

    def ack_nowait(self) -> asyncio.Future[None] | None:
        """Start :meth:`ack` without waiting for it: ``None`` if the message is acked
        already, else a future that settles as ``ack()`` would have returned (or raised).

        The runner acks through this and moves on to the next message while the ack
        travels. The default runs ``ack()`` in a task of its own. A transport may
        override it to spare that task: one whose ack is in-process can finish it
        here and return ``None``; one whose ack hands the work to a writer can return
        the writer's future for it.
        """
        return asyncio.ensure_future(self.ack())

    @abc.abstractmethod
    async def release(self) -> None:
        """The message was not handled (shutdown, cancellation); deliver it again later.

        On log-based transports this means "do not commit past this position".
        """

    @property
    def withdrawn(self) -> bool:
        """``True`` once the transport took the message back before it was handled (its
        Kafka partition was revoked and another member owns it now). The core then drops
        it without calling the handler, acking or releasing it. Default ``False``."""
        return False


DeliverySink = Callable[[Delivery], Awaitable[None]]
"""Called by a transport for each received message. It returns when the core has
room for the delivery, which is how backpressure reaches the transport: a transport
must not fetch more while a call is pending."""


@frozen
class SubscriptionSpec:
    """What the core asks a transport to subscribe to.

    ``group`` ``None`` means broadcast: this subscription alone sees every event
    published after it started. ``consumer_name`` is unique within the group and
    stable for the life of the subscription. ``prefetch`` bounds how many
    unacknowledged messages the transport may hand out. ``start_from`` positions a
    group that does not exist yet (or a broadcast subscription).
    """

    topics: tuple[str, ...]
    group: str | None
    consumer_name: str
    prefetch: int = 100
    start_from: StartFrom = "latest"


class TransportSubscription(abc.ABC):
    """A live subscription returned by :meth:`Transport.subscribe`."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop fetching. Returns when no more deliveries will reach the sink.

        Messages fetched but never handed to the sink are released. Deliveries the
        core still holds are acked or released by the core afterwards, so a
        transport must keep acking working until :meth:`Transport.close`.
        """


class Transport(abc.ABC):
    """A connection to one broker. Created un-started by the plugin's factory.

    ``start`` connects (and undoes partial setup if it fails); ``close`` flushes and
    releases every connection and task; both are idempotent.
    """

    name: str = "transport"
    capabilities: Capabilities = Capabilities()
    default_max_deliveries: int | None = None
    """Dead-letter threshold for subscriptions whose ``ConsumerOptions.max_deliveries``
    is ``None`` (a transport that counts redeliveries may set one from its config)."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, messages: Sequence[Message]) -> None:
        """Store ``messages`` durably (as durable as the transport is) or raise.

        Returns only when every message was accepted; raises a
        :class:`~dotmac.events.errors.TransportError` otherwise.
        """

    @abc.abstractmethod
    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        """Subscribe and return once the subscription is live (joined and positioned).

        Every message published after this returns must reach ``sink``.
        """

    async def read(self, topic: str, *, limit: int = 100) -> list[Message]:
        """Return up to ``limit`` retained messages of ``topic``, oldest first.

        Optional (``capabilities.readable``); used to list dead letters.
        """
        from .errors import UnsupportedOperationError

        raise UnsupportedOperationError(f"the {self.name} transport cannot read topics back")

    async def groups(self, topic: str) -> Sequence[GroupInfo]:
        """The consumer groups of ``topic`` with their members, pending events and lag.

        Optional (``capabilities.introspection``); broadcast subscriptions are not
        groups and are not listed. A topic that does not exist has no groups.
        """
        from .errors import UnsupportedOperationError

        raise UnsupportedOperationError(f"the {self.name} transport cannot list consumer groups")

    async def topics(self) -> Sequence[str]:
        """The names of the topics the broker holds for this transport, in any order.

        Optional (``capabilities.introspection``). Only topics this transport could
        publish to or subscribe to are listed: streams of another key prefix or
        namespace, and the broker's own internal topics, are not. Dead-letter topics
        are topics and are listed; :meth:`EventBus.topics` leaves out the bus's reply
        topics itself.
        """
        from .errors import UnsupportedOperationError

        raise UnsupportedOperationError(f"the {self.name} transport cannot list topics")

    def describe(self) -> Mapping[str, object]:
        """Non-secret facts for logs and ``dotmac-events plugins`` (host, port, ...)."""
        return {"transport": self.name}
