"""Subscriptions: what every subscription does, and broadcast ones (``XREAD``).

A subscription has a *reader* connection of its own for blocking reads, which
``stop()`` wakes with ``CLIENT UNBLOCK`` instead of waiting for the timeout, and a
loop that reads while fewer than ``prefetch`` entries are un-acknowledged and hands
each entry to the core as a :class:`RedisDelivery`. Consumer groups, with recovery
and reclaim of pending entries, are in ``_group``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from dotmac.events import Delivery, Message, SubscriptionSpec, TransportSubscription
from dotmac.events.bus import REPLY_TOPIC_PREFIX
from dotmac.events.transport import DeliverySink

from ._common import Backoff, entry_message, retriable, streams, text, transport_error, wait
from ._connection import Reader

if TYPE_CHECKING:
    from .transport import RedisTransport

__all__ = ["ACKED", "PENDING", "RELEASED", "BroadcastSubscription", "RedisDelivery", "Subscription"]

log = logging.getLogger(__name__)

_STOP_GRACE = 5.0


# -- deliveries --------------------------------------------------------------------------
PENDING, ACKED, RELEASED = 0, 1, 2


class RedisDelivery(Delivery):
    __slots__ = (
        "_settled",
        "_state",
        "_sub",
        "_withdrawn",
        "delivery_count",
        "entry_id",
        "key",
        "message",
        "ordering_key",
    )

    def __init__(self, sub: Subscription, key: str, message: Message, delivery_count: int) -> None:
        self.message = message
        self.delivery_count = delivery_count
        self.ordering_key: Hashable | None = message.key
        self.key = key
        self.entry_id = message.position or ""
        self._sub = sub
        self._state = PENDING
        self._settled: asyncio.Event | None = None
        self._withdrawn = False

    @property
    def withdrawn(self) -> bool:
        return self._withdrawn

    async def ack(self) -> None:
        written = self.ack_nowait()
        if written is not None:
            await written

    def ack_nowait(self) -> asyncio.Future[None] | None:
        # The ack writer's own future: no task per acknowledged entry. The writer
        # settles the entry once the ack is written, failed or abandoned (a waiter
        # that gives up on the future does not end the write).
        if self._state != PENDING:
            return None
        self._state = ACKED
        try:
            written = self._sub._acknowledge(self)
        except BaseException:
            self._sub._settle(self)
            raise
        if written is None:
            self._sub._settle(self)
        return written

    async def release(self) -> None:
        if self._state != PENDING:
            return
        self._state = RELEASED
        try:
            await self._sub._release(self)
        finally:
            self._sub._settle(self)

    def __repr__(self) -> str:
        return f"<RedisDelivery {self.key} {self.entry_id} count={self.delivery_count}>"


# -- subscriptions -----------------------------------------------------------------------
class Subscription(TransportSubscription):
    """Common machinery of group and broadcast subscriptions."""

    def __init__(self, transport: RedisTransport, spec: SubscriptionSpec, sink: DeliverySink) -> None:
        self._transport = transport
        self._config = transport.config
        self.spec = spec
        self._sink = sink
        self.name = spec.consumer_name
        self._keys = {transport.config.stream_key(t): t for t in spec.topics}
        cap = self._config.prefetch_count
        self.prefetch = spec.prefetch if cap is None else min(spec.prefetch, cap)
        # Refill once half the prefetch is free: one read per half window rather than one
        # per acknowledged entry, while the core still has the other half queued.
        self._refill_at = self.prefetch - max(1, self.prefetch // 2)
        self._outstanding: dict[tuple[str, str], RedisDelivery] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._phase: Literal["idle", "read", "sink"] = "idle"
        # With Redis Cluster the subscription's streams share one slot (the transport
        # splits a subscription across slots), so one node serves every read.
        self._read_link = Reader(transport.endpoint, transport._resolver(next(iter(self._keys))))
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(self._config.reconnect_backoff_max)
        self._failing_since: float | None = None
        self._last_error_log = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    def _start_loop(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"dotmac-events-redis-{self.name}")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._room.set()
        task = self._task
        if task is not None:
            deadline = time.monotonic() + _STOP_GRACE
            while not task.done():
                if self._phase == "sink":
                    # The core is full and stopping: the pending sink call would never
                    # return soon. The entry it carries is released on cancellation.
                    task.cancel()
                    break
                if self._phase == "read":
                    await self._unblock()
                await asyncio.wait({task}, timeout=0.05)
                if time.monotonic() > deadline:
                    log.warning(
                        "subscription %s did not stop within %.0fs; cancelling", self.name, _STOP_GRACE
                    )
                    task.cancel()
                    break
            await asyncio.gather(task, return_exceptions=True)
        self._read_link.close()
        await self._after_stop()
        self._transport._forget(self)

    async def _unblock(self) -> None:
        client_id = self._read_link.client_id
        if client_id is None:
            return
        try:
            client = self._transport._redis()
            if isinstance(client, RedisCluster):
                # The read blocks on the node the reader connected to.
                where = self._read_link.endpoint
                node = client.get_node(host=where.host, port=where.port)
                if node is None:
                    return
                await client.execute_command("CLIENT", "UNBLOCK", client_id, target_nodes=node)
            else:
                await client.execute_command(  # type: ignore[no-untyped-call]
                    "CLIENT", "UNBLOCK", client_id
                )
        except RedisError as exc:
            log.debug("CLIENT UNBLOCK failed for %s: %r", self.name, exc)
            self._read_link.client_id = None

    async def _after_stop(self) -> None:
        """Hook: give back what was fetched but never handed to the core."""

    async def close_now(self) -> None:
        """Stop during transport close: also abandon deliveries the core still holds."""
        await self.stop()

    # -- the loop ------------------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._phase = "idle"
                if self._stopping.is_set():
                    break
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    with contextlib.suppress(Exception):
                        await self._recreate_groups()
                self._read_link.close()
                await self._on_error(exc)
                await self._transport._reroute(self._keys)
                continue
            if self._failing_since is not None:
                log.info(
                    "subscription %s to %s resumed after %.1fs",
                    self.name,
                    list(self.spec.topics),
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
                self._transport.counters["reconnects"] += 1
            self._backoff.reset()

    async def _on_error(self, exc: BaseException) -> None:
        delay = self._backoff.next()
        now = time.monotonic()
        if self._failing_since is None or now - self._last_error_log >= 60.0:
            if self._failing_since is None:
                self._failing_since = now
            self._last_error_log = now
            level = logging.WARNING if retriable(exc) else logging.ERROR
            log.log(
                level,
                "subscription %s to %s: %s: %s; retrying with backoff (failing for %.0fs)",
                self.name,
                list(self.spec.topics),
                type(exc).__name__,
                exc,
                now - self._failing_since,
            )
        else:
            log.debug("subscription %s still failing: %r", self.name, exc)
        await wait(self._stopping, delay)
        self._on_reconnect()

    def _on_reconnect(self) -> None:
        """Hook: state to rebuild after a connection failure."""

    async def _recreate_groups(self) -> None:
        """Hook: the consumer group vanished."""

    async def _step(self) -> None:
        raise NotImplementedError

    async def _wait_for_room(self) -> int:
        while len(self._outstanding) > self._refill_at and not self._stopping.is_set():
            self._room.clear()
            await self._room.wait()
        return self.prefetch - len(self._outstanding)

    async def _hand(
        self, key: str, message: Message, delivery_count: int, *, track: bool = False
    ) -> RedisDelivery:
        delivery = RedisDelivery(self, key, message, delivery_count)
        if track:
            delivery._settled = asyncio.Event()
        self._outstanding[(key, delivery.entry_id)] = delivery
        self._phase = "sink"
        try:
            await self._sink(delivery)
        except asyncio.CancelledError:
            # The core did not take it: give it back before going away (if this fails,
            # stop() releases every entry the core does not hold).
            with contextlib.suppress(Exception):
                await asyncio.shield(delivery.release())
            raise
        finally:
            self._phase = "idle"
        return delivery

    async def _hand_read(self, batch: list[tuple[str, Message]]) -> None:
        """Hand entries a read fetched (first deliveries) to the core in order, as
        :meth:`_hand` does one at a time, with one coroutine for the batch."""
        outstanding = self._outstanding
        sink = self._sink
        stopping = self._stopping
        delivery: RedisDelivery | None = None
        self._phase = "sink"
        try:
            for i, (key, message) in enumerate(batch):
                if stopping.is_set():
                    # Fetched but never handed out: stop() releases what this consumer owns.
                    log.debug("subscription %s stopping with %d fetched entries", self.name, len(batch) - i)
                    return
                delivery = RedisDelivery(self, key, message, 1)
                outstanding[(key, delivery.entry_id)] = delivery
                await sink(delivery)
                delivery = None
        except asyncio.CancelledError:
            if delivery is not None:
                # The core did not take it: give it back (see _hand).
                with contextlib.suppress(Exception):
                    await asyncio.shield(delivery.release())
            raise
        finally:
            self._phase = "idle"

    async def _read(self, *args: Any) -> Any:
        self._phase = "read"
        try:
            return await self._read_link.command(*args)
        finally:
            self._phase = "idle"

    def _count_for_read(self, room: int) -> int:
        # COUNT applies to each stream of a multi-stream read.
        return max(1, -(-room // len(self._keys)))

    # -- delivery callbacks --------------------------------------------------------------
    def _settle(self, delivery: RedisDelivery) -> None:
        outstanding = self._outstanding
        outstanding.pop((delivery.key, delivery.entry_id), None)
        if len(outstanding) <= self._refill_at:
            # Wake a loop waiting for room only once it may read again.
            self._room.set()
        if delivery._settled is not None:
            delivery._settled.set()

    def _acknowledge(self, delivery: RedisDelivery) -> asyncio.Future[None] | None:
        """Hook: start making the acknowledgement durable; the future is done once it
        is (``None``: nothing to wait for). Whatever returns a future settles the
        delivery (``_settle``) before the future is done."""
        return None

    async def _release(self, delivery: RedisDelivery) -> None:
        """Hook: make the entry available for redelivery."""


class BroadcastSubscription(Subscription):
    """Every entry published after the subscription started (``XREAD``)."""

    def __init__(self, transport: RedisTransport, spec: SubscriptionSpec, sink: DeliverySink) -> None:
        super().__init__(transport, spec, sink)
        self._last: dict[str, str] = {}

    async def open(self) -> None:
        client = self._transport._redis()
        try:
            for key in self._keys:
                if self.spec.start_from == "earliest":
                    self._last[key] = "0-0"
                    continue
                newest = await client.xrevrange(key, "+", "-", count=1)
                self._last[key] = text(newest[0][0]) if newest else "0-0"
        except RedisError as exc:
            raise transport_error("cannot subscribe", exc) from exc
        self._start_loop()

    async def _step(self) -> None:
        room = await self._wait_for_room()
        if self._stopping.is_set():
            return
        keys = list(self._keys)
        reply = await self._read(
            "XREAD",
            "COUNT",
            self._count_for_read(room),
            "BLOCK",
            int(self._config.block_timeout * 1000),
            "STREAMS",
            *keys,
            *(self._last[k] for k in keys),
        )
        if not reply:
            return
        for stream, entries in streams(reply):
            key = text(stream)
            topic = self._keys[key]
            for entry_id, fields in entries:
                if self._stopping.is_set():
                    return
                self._last[key] = text(entry_id)
                if fields is None:
                    continue
                await self._hand(key, entry_message(topic, entry_id, fields), 1)

    async def _after_stop(self) -> None:
        reply_keys = [k for k, t in self._keys.items() if t.startswith(REPLY_TOPIC_PREFIX)]
        for key in reply_keys:  # one by one: on a cluster they may be in different slots
            with contextlib.suppress(Exception):
                await self._transport._redis().delete(key)
