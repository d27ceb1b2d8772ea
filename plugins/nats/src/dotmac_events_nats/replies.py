"""Reply topics over core NATS: a bus's private reply topic is not stored in JetStream.

The core reads replies through a broadcast subscription to its own reply topic
(``dotmac.reply.<id>``). A reply only matters to the requester that waits for it
right now, so the transport carries reply topics on plain NATS subjects under
``_INBOX.<subject_prefix>.`` — NATS's own convention for replies, outside every stream —
instead of storing each reply in the stream and keeping a consumer per requester.
A reply published while its requester is gone is dropped, as a core NATS reply is;
the request itself then times out on the requester's side, if it is still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from dotmac.events import Delivery, Message, SubscriptionSpec, TransportSubscription
from dotmac.events.bus import REPLY_TOPIC_PREFIX
from dotmac.events.transport import DeliverySink

from .subjects import decode_headers

if TYPE_CHECKING:
    from .transport import NatsTransport

__all__ = ["ReplySubscription", "is_reply_topic", "reply_subject"]

log = logging.getLogger(__name__)


def is_reply_topic(topic: str) -> bool:
    return topic.startswith(REPLY_TOPIC_PREFIX)


def reply_subject(prefix: str, topic: str) -> str:
    return f"_INBOX.{prefix}.{topic}"


class _ReplyDelivery(Delivery):
    __slots__ = ("delivery_count", "message", "ordering_key")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.delivery_count = 1
        self.ordering_key = None

    async def ack(self) -> None:
        return None  # core NATS has nothing to acknowledge

    def ack_nowait(self) -> asyncio.Future[None] | None:
        return None

    async def release(self) -> None:
        # Only a requester that is still waiting could use it, and that is this bus.
        log.debug("dropping a reply on %s at shutdown", self.message.topic)


class ReplySubscription(TransportSubscription):
    """A plain NATS subscription per reply topic; the sink call blocks its reader."""

    def __init__(self, transport: NatsTransport, spec: SubscriptionSpec, sink: DeliverySink) -> None:
        self.transport = transport
        self.spec = spec
        self.sink = sink
        self._subs: list[Any] = []
        self._stopping = False

    async def open(self) -> None:
        nc = self.transport.connection
        prefix = self.transport.config.subject_prefix
        for topic in self.spec.topics:
            self._subs.append(await nc.subscribe(reply_subject(prefix, topic), cb=self._receiver(topic)))

    def _receiver(self, topic: str) -> Any:
        async def receive(msg: Msg) -> None:
            if self._stopping:
                return
            key, headers = decode_headers(msg.headers)
            await self.sink(_ReplyDelivery(Message(topic=topic, value=msg.data, key=key, headers=headers)))

        return receive

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        self.transport.forget(self)

    async def close(self) -> None:
        await self.stop()
