"""Consumer groups as AMQP can report them (``bus.groups``).

A group is the durable queue ``{queue_prefix}:{topic}:{group}``. A passive
``queue.declare`` answers with the queue's ready messages (the lag: routed to the
group, not handed out yet) and its number of consumers; AMQP 0-9-1 does not say how
many messages are delivered and not acknowledged, nor who the consumers are, nor which
queues are bound to a topic (the management API does, over HTTP).

So that a topic's groups can be found over AMQP alone, the transport keeps a
**registry**: the durable classic queue ``{queue_prefix}:{topic}:@groups``, bound to
the bus's exchange under its own name (a routing key no topic can have), holding one
message per group (its name as body). A member writes its group there when it
subscribes, unless it is there already; :func:`list_groups` reads the registry with
``basic.get`` and gives the messages back by closing the channel, as dead-letter
listings do. While one reader holds the messages another reader does not see them;
each transport remembers the groups it has seen, so a reader that overlaps another
misses only groups it never saw before, until its next call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel

from dotmac.events.transport import GroupInfo

if TYPE_CHECKING:
    from .transport import RabbitMQTransport

__all__ = ["REGISTRY_SUFFIX", "list_groups", "register_group"]

log = logging.getLogger(__name__)

REGISTRY_SUFFIX = "@groups"


async def _read_registry(channel: AbstractRobustChannel, name: str) -> set[str] | None:
    """The group names in registry ``name`` (left in place once the channel closes);
    ``None`` when there is no registry (the channel is closed by the broker then)."""
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    found: set[str] = set()
    while True:
        incoming = await queue.get(no_ack=False, fail=False)
        if incoming is None:
            return found
        found.add(incoming.body.decode("utf-8", "replace"))


async def register_group(transport: RabbitMQTransport, topic: str, group: str) -> None:
    """Write ``group`` into ``topic``'s registry unless it is there already."""
    config = transport.config
    name = config.queue_name(topic, REGISTRY_SUFFIX)
    channel = await transport.open_channel()
    try:
        # Classic: read() gives back what it fetched, which a quorum queue would count
        # as failed deliveries.
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "classic"})
        await queue.bind(config.exchange, routing_key=name)
        listed = await _read_registry(channel, name) or set()
    finally:
        if not channel.is_closed:
            await channel.close()
    transport.known_groups.add((topic, group))
    transport.known_groups.update((topic, g) for g in listed)
    if group in listed:
        return
    # Two members subscribing at once may both write it; readers merge duplicates.
    await transport.publish_internal(
        aio_pika.Message(group.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), name
    )
    log.debug("group %s of %s written to the registry %s", group, topic, name)


async def list_groups(transport: RabbitMQTransport, topic: str) -> list[GroupInfo]:
    config = transport.config
    channel = await transport.open_channel()
    try:
        listed = await _read_registry(channel, config.queue_name(topic, REGISTRY_SUFFIX))
        if channel.is_closed:
            channel = await transport.open_channel()
        names = (listed or set()) | {g for t, g in transport.known_groups if t == topic}
        out: list[GroupInfo] = []
        for group in sorted(names):
            try:
                declared = await channel.declare_queue(config.queue_name(topic, group), passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                # Registered, but the queue was deleted: no group any more.
                transport.known_groups.discard((topic, group))
                channel = await transport.open_channel()
                continue
            transport.known_groups.add((topic, group))
            result = declared.declaration_result
            out.append(
                GroupInfo(
                    topic=topic,
                    group=group,
                    members=(),
                    member_count=result.consumer_count,
                    pending=None,
                    lag=result.message_count,
                )
            )
        return out
    finally:
        if not channel.is_closed:
            await channel.close()
