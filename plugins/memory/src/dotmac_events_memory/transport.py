"""The in-process transport behind ``memory://``.

Buses in one process (and one event loop) that use the same ``memory://NAME`` share
a broker. Each topic fans out to its *holders*: one per consumer group (members
compete for its queue) and one per broadcast subscription. Holders are bounded by
``max_queue_size``; a full holder makes ``publish`` wait (up to ``publish_timeout``)
or fail with :class:`~dotmac.events.errors.QueueFullError`. A group outlives its
members, so events published while it has none wait for the next member, and events
a stopping member released go to another member.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from dotmac.events import (
    Capabilities,
    Delivery,
    GroupInfo,
    Message,
    QueueFullError,
    SubscriptionSpec,
    Transport,
    TransportSubscription,
    TransportUnavailableError,
)
from dotmac.events.errors import BusStateError
from dotmac.events.transport import DeliverySink

from .config import MemoryConfig, persistence_file

__all__ = ["CAPABILITIES", "MemoryTransport", "read_persistence_log"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    persistent=False,
    consumer_groups=True,
    partitions=False,
    ordering="topic",
    request_reply=True,
    replay_backlog=True,
    readable=True,
    restartable=False,
    batch_publish=True,
    introspection=True,
)


class _Entry:
    __slots__ = ("count", "message")

    def __init__(self, message: Message, count: int) -> None:
        self.message = message
        self.count = count


class _Holder:
    """The queue of one consumer group (or one broadcast subscription) on one topic."""

    __slots__ = ("closed", "inflight", "label", "maxsize", "members", "nonempty", "ready", "space", "taken")

    def __init__(self, maxsize: int, label: str) -> None:
        self.ready: deque[_Entry] = deque()
        self.nonempty = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.maxsize = maxsize
        self.inflight = 0
        self.closed = False
        self.label = label
        self.members: dict[str, int] = {}  # consumer name -> its subscriptions on this holder
        # When each in-flight delivery was handed out, oldest first (for GroupInfo).
        self.taken: dict[_MemoryDelivery, float] = {}

    def put(self, entry: _Entry) -> None:
        ready = self.ready
        ready.append(entry)
        # nonempty is cleared only while ready is empty (in get), so only the first
        # entry after that needs to set it.
        if len(ready) == 1:
            self.nonempty.set()
        if len(self.ready) >= self.maxsize:
            self.space.clear()

    def requeue(self, entry: _Entry) -> None:
        if self.closed:
            return
        # Released events go first so they are not overtaken by later ones.
        self.ready.appendleft(entry)
        self.nonempty.set()

    async def get(self) -> _Entry:
        while not self.ready:
            self.nonempty.clear()
            await self.nonempty.wait()
        entry = self.ready.popleft()
        # Every taken entry wakes a publisher waiting for room (it may need several).
        self.space.set()
        return entry


class _Topic:
    __slots__ = ("groups", "holders", "next_offset", "retained")

    def __init__(self, retention: int) -> None:
        self.retained: deque[Message] = deque(maxlen=retention) if retention > 0 else deque(maxlen=0)
        self.holders: list[_Holder] = []
        self.groups: dict[str, _Holder] = {}
        self.next_offset = 0


class _Broker:
    def __init__(self, config: MemoryConfig) -> None:
        self.config = config
        self.topics: dict[str, _Topic] = {}
        self.refs = 0
        self.log_file: IO[str] | None = None
        if config.enable_persistence:
            self.log_file = persistence_file(config).open("a", encoding="utf-8")

    def topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _Topic(self.config.retention)
        return topic

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


# (id(loop), name) -> broker; a broker lives while a started transport uses it.
_brokers: dict[tuple[int, str], _Broker] = {}


class _MemoryDelivery(Delivery):
    __slots__ = ("_done", "_entry", "_holder", "_owner", "delivery_count", "message", "ordering_key")

    def __init__(self, entry: _Entry, holder: _Holder, owner: _MemorySubscription) -> None:
        self.message = entry.message
        self.delivery_count = entry.count
        self.ordering_key = entry.message.key
        self._holder = holder
        self._owner = owner
        self._entry = entry
        self._done = False

    def _settle(self) -> None:
        self._done = True
        self._holder.inflight -= 1
        self._holder.taken.pop(self, None)
        owner = self._owner
        owner.unacked -= 1
        if owner.waiting and owner.unacked < owner.prefetch:
            owner.room.set()
            owner.waiting = False  # woken once: the pump looks again when it runs

    async def ack(self) -> None:
        self.ack_nowait()

    def ack_nowait(self) -> None:
        # In-process: the ack is done here, so the runner needs no task for it.
        if not self._done:
            self._settle()

    def release_now(self) -> None:
        if not self._done:
            self._settle()
            self._holder.requeue(_Entry(self._entry.message, self._entry.count + 1))

    async def release(self) -> None:
        self.release_now()


class _MemorySubscription(TransportSubscription):
    def __init__(
        self,
        transport: MemoryTransport,
        holders: list[tuple[_Topic, _Holder]],
        broadcast: bool,
        name: str,
        prefetch: int,
    ) -> None:
        # Un-acked deliveries this subscription holds, bounded by ``prefetch``.
        self.unacked = 0
        self.prefetch = prefetch
        self.room = asyncio.Event()
        # The pump is waiting on ``room``: only then does a settled delivery set it.
        self.waiting = False
        self._transport = transport
        self._holders = holders
        self._broadcast = broadcast
        self._name = name
        for _topic, holder in holders:
            holder.members[name] = holder.members.get(name, 0) + 1
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    def start(self, sink: DeliverySink, name: str) -> None:
        for _topic, holder in self._holders:
            self._tasks.append(asyncio.create_task(self._pump(holder, sink), name=f"memory-pump-{name}"))

    async def _pump(self, holder: _Holder, sink: DeliverySink) -> None:
        ready = holder.ready
        while True:
            while self.unacked >= self.prefetch:
                self.room.clear()
                self.waiting = True
                try:
                    await self.room.wait()
                finally:
                    self.waiting = False
            if ready:
                entry = ready.popleft()
                if len(ready) < holder.maxsize:
                    holder.space.set()
            else:
                entry = await holder.get()
            holder.inflight += 1
            self.unacked += 1
            delivery = _MemoryDelivery(entry, holder, self)
            holder.taken[delivery] = time.monotonic()
            try:
                await sink(delivery)
            except asyncio.CancelledError:
                # The sink did not take it: give it back before going away.
                delivery.release_now()
                raise

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for _topic, holder in self._holders:
            left = holder.members.get(self._name, 0) - 1
            if left > 0:
                holder.members[self._name] = left
            else:
                holder.members.pop(self._name, None)
        if self._broadcast:
            for topic, holder in self._holders:
                holder.closed = True
                with contextlib.suppress(ValueError):
                    topic.holders.remove(holder)
        self._transport._subs.discard(self)


class MemoryTransport(Transport):
    """``memory://NAME``: an in-process broker shared by the buses that name it."""

    name = "memory"
    capabilities = CAPABILITIES

    def __init__(self, config: MemoryConfig) -> None:
        self.config = config
        self._broker: _Broker | None = None
        self._key: tuple[int, str] | None = None
        self._subs: set[_MemorySubscription] = set()

    def describe(self) -> Mapping[str, object]:
        return {"transport": "memory", "name": self.config.name}

    def __repr__(self) -> str:
        return f"<MemoryTransport name={self.config.name!r}>"

    def _require(self) -> _Broker:
        if self._broker is None:
            raise BusStateError("the memory transport is not started")
        return self._broker

    async def start(self) -> None:
        if self._broker is not None:
            return
        key = (id(asyncio.get_running_loop()), self.config.name)
        broker = _brokers.get(key)
        if broker is None:
            broker = _brokers[key] = _Broker(self.config)
        broker.refs += 1
        self._broker = broker
        self._key = key

    async def close(self) -> None:
        broker = self._broker
        if broker is None:
            return
        for sub in list(self._subs):
            await sub.stop()
        self._broker = None
        broker.refs -= 1
        if broker.refs <= 0:
            broker.close()
            if self._key is not None and _brokers.get(self._key) is broker:
                del _brokers[self._key]

    async def publish(self, messages: Sequence[Message]) -> None:
        """Store a batch all-or-nothing: wait (or fail) until every queue the batch
        reaches has room for its share, then store it without yielding."""
        broker = self._require()
        config = self.config
        while True:
            if len(messages) == 1:
                # One event (bus.publish): each holder of its topic needs one place.
                name = messages[0].topic
                full = None
                for holder in broker.topic(name).holders:
                    if not holder.closed and len(holder.ready) >= holder.maxsize:
                        full = holder
                        break
                if full is None:
                    break
                await self._wait_for_space(full, 1, name, batch=1)
                continue
            needed: dict[int, tuple[_Holder, int, str]] = {}
            for message in messages:
                for holder in broker.topic(message.topic).holders:
                    _h, count, _t = needed.get(id(holder), (holder, 0, message.topic))
                    needed[id(holder)] = (holder, count + 1, message.topic)
            short = next(
                ((h, n, t) for h, n, t in needed.values() if not h.closed and len(h.ready) + n > h.maxsize),
                None,
            )
            if short is None:
                break
            await self._wait_for_space(*short, batch=len(messages))
        for message in messages:
            topic = broker.topic(message.topic)
            offset = topic.next_offset
            topic.next_offset = offset + 1
            stored = Message(message.topic, message.value, message.key, message.headers, str(offset))
            topic.retained.append(stored)
            for holder in topic.holders:
                holder.put(_Entry(stored, 1))
            if broker.log_file is not None:
                broker.log_file.write(_log_line(stored) + "\n")
        if broker.log_file is not None and config.persistence_flush:
            broker.log_file.flush()

    async def _wait_for_space(self, holder: _Holder, count: int, topic: str, *, batch: int) -> None:
        config = self.config
        what = "an event" if batch == 1 else f"a batch of {batch} events"
        if count > holder.maxsize:
            raise QueueFullError(
                f"{what} needs {count} places in the memory queue of {holder.label} on {topic!r}, "
                f"which holds at most {holder.maxsize} (max_queue_size); nothing was stored",
                retriable=False,
            )
        if config.overflow == "fail":
            raise QueueFullError(
                f"memory queue of {holder.label} on {topic!r} has no room for {what} "
                f"(max_queue_size={config.max_queue_size}, overflow='fail'); nothing was stored"
            )
        deadline = time.monotonic() + config.publish_timeout
        while len(holder.ready) + count > holder.maxsize and not holder.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueFullError(
                    f"memory queue of {holder.label} on {topic!r} had no room for {what} for "
                    f"{config.publish_timeout}s; nothing was stored"
                )
            holder.space.clear()
            try:
                await asyncio.wait_for(holder.space.wait(), remaining)
            except asyncio.TimeoutError:
                continue
        if self._broker is None:
            raise TransportUnavailableError("the memory transport was closed while publishing")

    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        broker = self._require()
        holders: list[tuple[_Topic, _Holder]] = []
        for name in spec.topics:
            topic = broker.topic(name)
            if spec.group is None:
                holder = _Holder(self.config.max_queue_size, f"subscription {spec.consumer_name}")
                if spec.start_from == "earliest":
                    for message in topic.retained:
                        holder.put(_Entry(message, 1))
                topic.holders.append(holder)
            else:
                existing = topic.groups.get(spec.group)
                if existing is not None:
                    holder = existing
                else:
                    holder = _Holder(self.config.max_queue_size, f"group {spec.group!r}")
                    if spec.start_from == "earliest":
                        for message in topic.retained:
                            holder.put(_Entry(message, 1))
                    topic.groups[spec.group] = holder
                    topic.holders.append(holder)
            holders.append((topic, holder))
        sub = _MemorySubscription(
            self, holders, broadcast=spec.group is None, name=spec.consumer_name, prefetch=spec.prefetch
        )
        sub.start(sink, spec.consumer_name)
        self._subs.add(sub)
        return sub

    async def read(self, topic: str, *, limit: int = 100) -> list[Message]:
        broker = self._require()
        retained = broker.topics.get(topic)
        if retained is None:
            return []
        return list(retained.retained)[:limit]

    async def groups(self, topic: str) -> list[GroupInfo]:
        broker = self._require()
        state = broker.topics.get(topic)
        if state is None:
            return []
        now = time.monotonic()
        infos = []
        for group, holder in sorted(state.groups.items()):
            oldest = next(iter(holder.taken.values()), None)
            infos.append(
                GroupInfo(
                    topic=topic,
                    group=group,
                    members=tuple(sorted(holder.members)),
                    pending=holder.inflight,
                    lag=len(holder.ready),
                    oldest_pending_age=None if oldest is None else now - oldest,
                )
            )
        return infos

    async def topics(self) -> list[str]:
        return list(self._require().topics)

    def stats(self) -> dict[str, Any]:
        """Queue depths per topic and holder (for debugging and tests)."""
        broker = self._require()
        return {
            name: {
                "published": topic.next_offset,
                "retained": len(topic.retained),
                "holders": {h.label: {"ready": len(h.ready), "inflight": h.inflight} for h in topic.holders},
            }
            for name, topic in broker.topics.items()
        }


def _log_line(message: Message) -> str:
    return json.dumps(
        {
            "topic": message.topic,
            "position": message.position,
            "key": message.key,
            "headers": dict(message.headers),
            "value": base64.b64encode(message.value).decode("ascii"),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def read_persistence_log(path: str | Path) -> Iterator[Message]:
    """The messages of a persistence log, in publish order (for inspection or replay).

    Replay them with ``await bus.transport.publish(list(read_persistence_log(path)))``.
    """
    # Text that is not UTF-8 is kept as lone surrogates (the transports' rule for
    # received headers), so the core dead-letters such a message when it is replayed.
    with Path(path).open(encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            yield Message(
                topic=record["topic"],
                value=base64.b64decode(record["value"]),
                key=record.get("key"),
                headers=record.get("headers") or {},
                position=record.get("position"),
            )
