"""Consumer groups of a topic, for :meth:`Transport.groups`: committed against end offsets.

What each Kafka request gives, and what a broker may lack:

- ``ListGroups`` names the groups of the cluster; ``OffsetFetch`` for the topic's
  partitions tells which of them consume this topic (a group with no committed offset
  on any partition of it is not listed). ``OffsetFetch`` for *all* of a group's
  partitions (no partition list) is not used: some Kafka-protocol brokers answer it
  with a reply aiokafka cannot decode.
- End offsets are the high watermarks of a fetch (``ListOffsets`` latest is not exact
  on every Kafka-protocol broker). Lag is the sum over partitions of
  end minus committed; it is ``None`` when a partition has no committed offset (where
  the group would start there depends on its reset policy, so the broker cannot tell).
- Members come from ``DescribeGroups``. Kafka says which partitions each member holds,
  so only members assigned a partition of the topic are listed; a broker that leaves
  assignments empty (some Kafka-protocol brokers do) gets every member of the group.
- Kafka does not know what a member fetched and has not committed: ``pending`` is
  ``0`` and ``oldest_pending_age`` is ``None``; the events a member holds count as lag.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NoBrokersAvailable,
    NodeNotReadyError,
    RequestTimedOutError,
)

from dotmac.events import GroupInfo, TransportError, TransportUnavailableError

__all__ = ["topic_groups"]

log = logging.getLogger(__name__)

_HIGHWATER_TIMEOUT = 10.0  # seconds to get a fetch response for every partition

_UNREACHABLE = (
    KafkaConnectionError,
    NodeNotReadyError,
    NoBrokersAvailable,
    RequestTimedOutError,
    KafkaTimeoutError,
)


def _assigned_topics(assignment: bytes) -> set[str] | None:
    """The topics of a member's assignment; ``None`` when the broker sent none."""
    if not assignment:
        return None
    try:
        decoded = ConsumerProtocolMemberAssignment.decode(assignment)
    except Exception:  # an assignment of a non-consumer protocol: say nothing
        return None
    return {topic for topic, _partitions in decoded.assignment}


async def _members(admin: AIOKafkaAdminClient, group: str, topic: str) -> tuple[str, ...]:
    members: set[str] = set()
    for response in await admin.describe_consumer_groups([group]):
        for described in response.groups:
            # A member is (member_id, [group_instance_id from v4 on,] client_id,
            # client_host, metadata, assignment): the assignment is always last.
            for member in described[5]:
                topics = _assigned_topics(member[-1])
                if topics is None or topic in topics:
                    members.add(member[0])
    return tuple(sorted(members))


async def topic_groups(
    admin: AIOKafkaAdminClient, client_options: Mapping[str, Any], topic: str, partitions: Iterable[int]
) -> list[GroupInfo]:
    """The consumer groups that committed offsets on ``topic`` (with ``partitions``), by name.

    ``admin`` is a started admin client; ``client_options`` are the connection options
    for the short-lived consumer that reads the end offsets.
    """
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return []
    try:
        committed: dict[str, dict[TopicPartition, int | None]] = {}
        for group, _protocol in sorted(await admin.list_consumer_groups()):
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            per_tp = {tp: (o.offset if o.offset >= 0 else None) for tp, o in offsets.items()}
            if any(v is not None for v in per_tp.values()):
                committed[group] = {tp: per_tp.get(tp) for tp in tps}
        if not committed:
            return []
        ends = await _end_offsets(client_options, tps)
        infos = []
        for group, per_tp in committed.items():
            lag: int | None = 0
            for tp, offset in per_tp.items():
                if offset is None or lag is None:
                    lag = None
                    continue
                lag += max(ends[tp] - offset, 0)
            infos.append(
                GroupInfo(topic=topic, group=group, members=await _members(admin, group, topic), lag=lag)
            )
    except _UNREACHABLE as exc:
        raise TransportUnavailableError(f"cannot list the groups of {topic!r}: {type(exc).__name__}") from exc
    except KafkaError as exc:
        raise TransportError(
            f"cannot list the groups of {topic!r}: {exc!r}", retriable=exc.retriable
        ) from exc
    return infos


async def _end_offsets(
    client_options: Mapping[str, Any], tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The high watermark of each partition, as a fetch response states it.

    ``ListOffsets`` (latest) alone is not exact on every Kafka-protocol broker (one
    answered the base offset of the last batch plus one after a batched publish), so
    it only says where to start fetching; the fetch's high watermark is the answer.
    """
    consumer = AIOKafkaConsumer(**client_options, group_id=None, enable_auto_commit=False, max_poll_records=1)
    try:
        await consumer.start()
        consumer.assign(tps)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, max(offset - 1, 0))
        deadline = time.monotonic() + _HIGHWATER_TIMEOUT
        while True:
            missing = [tp for tp in tps if consumer.highwater(tp) is None]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise TransportUnavailableError(f"no high watermark for {missing} from the broker")
            await consumer.getmany(*missing, timeout_ms=200, max_records=1)
        return {tp: int(consumer.highwater(tp) or 0) for tp in tps}
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
