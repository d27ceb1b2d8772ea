"""Consumer-group subscriptions: reading with ``XREADGROUP``, recovering and
reclaiming pending entries, and keeping leases on the entries in flight.

The loop first recovers the consumer's own pending entries, then reclaims entries
idle longer than ``min_idle_time`` from dead consumers, then reads new entries. A
lease task keeps the idle time of in-flight entries low, so a live consumer with a
slow handler is not robbed by a reclaimer.

Recovered entries (own pending, reclaimed) go to the core one at a time, and their
delivery counter grows only when they are handed out: a message that crashes the
process is the only one whose count climbs, so ``max_deliveries`` dead-letters it
without dragging the entries fetched alongside it to the dead-letter topic too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError, ResponseError

from dotmac.events import Message, SubscriptionSpec
from dotmac.events.transport import DeliverySink

from ._common import RELEASED_IDLE_MS, entry_message, streams, text, transport_error, wait
from ._subscription import PENDING, RedisDelivery, Subscription

if TYPE_CHECKING:
    from .transport import Client, RedisTransport

__all__ = ["GroupSubscription"]

log = logging.getLogger(__name__)

_RECLAIM_BATCH = 100
_SWEEP_BATCH = 500


class GroupSubscription(Subscription):
    """A member of a consumer group on one or more streams."""

    def __init__(self, transport: RedisTransport, spec: SubscriptionSpec, sink: DeliverySink) -> None:
        super().__init__(transport, spec, sink)
        assert spec.group is not None
        self.group = spec.group
        self._recover_own = True
        self._next_reclaim = 0.0
        self._next_cleanup = 0.0
        # Entries this consumer owns but has not handed out yet (recovery in progress).
        self._reserved: dict[str, set[str]] = {k: set() for k in self._keys}
        self._lease_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        start = "$" if self.spec.start_from == "latest" else "0"
        client = self._transport._redis()
        try:
            for key in self._keys:
                await self._create_group(client, key, start)
        except RedisError as exc:
            raise transport_error(f"cannot join group {self.group!r}", exc) from exc
        self._start_loop()
        self._lease_task = asyncio.create_task(self._lease(), name=f"dotmac-events-redis-lease-{self.name}")

    async def _create_group(self, client: Client, key: str, start: str) -> bool:
        try:
            await client.xgroup_create(key, self.group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        log.debug("created group %s on %s at %s", self.group, key, start)
        return True

    def _on_reconnect(self) -> None:
        # Entries delivered while the connection broke, and acks Redis lost in a crash,
        # are in this consumer's pending list: go through it again.
        self._recover_own = True

    async def _step(self) -> None:
        if self._recover_own:
            await self._recover_own_pending()
            self._recover_own = False
        now = time.monotonic()
        if now >= self._next_reclaim:
            await self._reclaim()
            self._next_reclaim = time.monotonic() + self._config.reclaim_interval
            if self._config.consumer_idle_timeout is not None and now >= self._next_cleanup:
                await self._forget_idle_consumers()
                self._next_cleanup = now + min(
                    60.0, max(self._config.reclaim_interval, self._config.consumer_idle_timeout / 2)
                )
        room = await self._wait_for_room()
        if self._stopping.is_set():
            return
        block = max(0.001, min(self._config.block_timeout, self._next_reclaim - time.monotonic()))
        keys = list(self._keys)
        reply = await self._read(
            "XREADGROUP",
            "GROUP",
            self.group,
            self.name,
            "COUNT",
            self._count_for_read(room),
            "BLOCK",
            int(block * 1000),
            "STREAMS",
            *keys,
            *([">"] * len(keys)),
        )
        if not reply:
            return
        batch: list[tuple[str, Message]] = []
        for stream, entries in streams(reply):
            key = text(stream)
            topic = self._keys[key]
            for entry_id, fields in entries:
                if fields is None:
                    continue
                batch.append((key, entry_message(topic, entry_id, fields)))
        await self._hand_read(batch)

    async def _recreate_groups(self) -> None:
        # The stream or the group vanished (deleted, or Redis lost its data): create the
        # group again at the start of the stream, so nothing published since is missed.
        client = self._transport._redis()
        for key in self._keys:
            if await self._create_group(client, key, "0"):
                log.warning(
                    "consumer group %s on %s had vanished (stream deleted or Redis data lost); "
                    "created it again from the start of the stream",
                    self.group,
                    key,
                )

    # -- recovery ------------------------------------------------------------------------
    async def _recover_own_pending(self) -> None:
        client = self._transport._redis()
        for key in self._keys:
            cursor = "-"
            while not self._stopping.is_set():
                raw = await self._transport._script("own_pending")(
                    keys=[key], args=[self.group, self.name, cursor, _RECLAIM_BATCH], client=client
                )
                ids = [text(i) for i in raw]
                if not ids:
                    break
                cursor = ids[-1]
                fresh = [i for i in ids if (key, i) not in self._outstanding]
                if fresh:
                    log.info(
                        "subscription %s recovers %d own pending entries of %s", self.name, len(fresh), key
                    )
                await self._recover(key, fresh)

    async def _reclaim(self) -> None:
        client = self._transport._redis()
        min_idle = int(self._config.min_idle_time * 1000)
        for key in self._keys:
            cursor = "0-0"
            while not self._stopping.is_set():
                next_cursor, ids, deleted = await self._transport._script("reclaim")(
                    keys=[key], args=[self.group, self.name, min_idle, cursor, _RECLAIM_BATCH], client=client
                )
                if deleted:
                    self._lost(key, len(deleted))
                claimed = [text(i) for i in ids if (key, text(i)) not in self._outstanding]
                if claimed:
                    self._transport.counters["reclaimed"] += len(claimed)
                    log.info(
                        "subscription %s reclaimed %d entries of %s idle for %.1fs or more",
                        self.name,
                        len(claimed),
                        key,
                        self._config.min_idle_time,
                    )
                    await self._recover(key, claimed)
                cursor = text(next_cursor)
                if cursor == "0-0":
                    break
        self._transport.counters["reclaim_runs"] += 1

    async def _recover(self, key: str, ids: list[str]) -> None:
        """Hand recovered entries to the core one at a time (see the module docstring)."""
        if not ids:
            return
        reserved = self._reserved[key]
        reserved.update(ids)
        topic = self._keys[key]
        script = self._transport._script("claim_one")
        client = self._transport._redis()
        try:
            for entry_id in ids:
                if self._stopping.is_set():
                    return
                reserved.discard(entry_id)
                result = await script(keys=[key], args=[self.group, self.name, entry_id], client=client)
                status = int(result[0])
                if status == 0:
                    continue  # another member took it meanwhile
                if status < 0:
                    self._lost(key, 1)
                    continue
                message = entry_message(topic, result[1], result[2])
                delivery = await self._hand(key, message, int(result[3]), track=True)
                settled = delivery._settled
                assert settled is not None
                while not settled.is_set() and not self._stopping.is_set():
                    waiter = asyncio.ensure_future(settled.wait())
                    stopper = asyncio.ensure_future(self._stopping.wait())
                    try:
                        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopper.cancel()
        finally:
            # Whatever was not handed out stays owned until stop() releases it or the
            # next recovery pass takes it.
            reserved.difference_update(ids)

    def _lost(self, key: str, n: int) -> None:
        self._transport.counters["pending_entries_lost"] += n
        log.error(
            "%d pending entries of group %s on %s no longer exist in the stream "
            "(trimmed with trim_policy='maxlen' or deleted): they cannot be delivered",
            n,
            self.group,
            key,
        )

    async def _forget_idle_consumers(self) -> None:
        client = self._transport._redis()
        idle_ms = int((self._config.consumer_idle_timeout or 0) * 1000)
        for key in self._keys:
            removed = await self._transport._script("forget_idle_consumers")(
                keys=[key], args=[self.group, idle_ms, self.name], client=client
            )
            if removed:
                log.info(
                    "removed %d idle consumers without pending entries from group %s on %s: %s",
                    len(removed),
                    self.group,
                    key,
                    ", ".join(text(r) for r in removed),
                )

    # -- leases --------------------------------------------------------------------------
    async def _lease(self) -> None:
        """Keep this consumer's in-flight and reserved entries from looking abandoned."""
        interval = max(0.05, self._config.min_idle_time / 3)
        closing = self._transport._closing
        while not closing.is_set():
            if await wait(closing, interval):
                return
            if self._stopped and not self._outstanding:
                self._transport._subs.discard(self)
                return
            per_key: dict[str, list[str]] = {k: sorted(v) for k, v in self._reserved.items()}
            for key, entry_id in list(self._outstanding):
                per_key.setdefault(key, []).append(entry_id)
            try:
                for key, ids in per_key.items():
                    for start in range(0, len(ids), _SWEEP_BATCH):
                        chunk = ids[start : start + _SWEEP_BATCH]
                        _n, taken = await self._transport._touch(key, self.group, self.name, chunk, 0)
                        for entry_id in taken:
                            self._withdraw(key, entry_id)
            except Exception as exc:
                log.debug("lease renewal of %s failed (retrying): %r", self.name, exc)

    def _withdraw(self, key: str, entry_id: str) -> None:
        # Another member reclaimed it (this one could not renew its lease, e.g. cut off
        # from Redis for longer than min_idle_time). If the core has not started it,
        # it drops it; the new owner handles it.
        delivery = self._outstanding.get((key, entry_id))
        if delivery is not None and delivery._state == PENDING:
            delivery._withdrawn = True
            self._transport.counters["withdrawn"] += 1
            log.info(
                "entry %s of %s was reclaimed by another member; withdrawn from %s", entry_id, key, self.name
            )
            self._settle(delivery)

    # -- acks ----------------------------------------------------------------------------
    def _acknowledge(self, delivery: RedisDelivery) -> asyncio.Future[None]:
        return self._transport._acks.ack(delivery, self.group, self.name)

    async def _release(self, delivery: RedisDelivery) -> None:
        self._transport.counters["released"] += 1
        writer = self._transport._acks
        await writer.submit(
            "release", delivery.key, self.group, self.name, delivery.entry_id, delivery.delivery_count
        )

    async def _after_stop(self) -> None:
        # Give back every entry this consumer owns that the core does not hold: fetched
        # but never handed out, reserved for recovery, or delivered by a read that the
        # stop interrupted.
        try:
            client = self._transport._redis()
            for key in self._keys:
                cursor = "-"
                while True:
                    raw = await self._transport._script("own_pending")(
                        keys=[key], args=[self.group, self.name, cursor, _SWEEP_BATCH], client=client
                    )
                    ids = [text(i) for i in raw]
                    if not ids:
                        break
                    cursor = ids[-1]
                    loose = [i for i in ids if (key, i) not in self._outstanding]
                    if loose:
                        n, _taken = await self._transport._touch(
                            key, self.group, self.name, loose, RELEASED_IDLE_MS
                        )
                        self._transport.counters["released"] += n
        except Exception as exc:
            log.warning(
                "subscription %s could not release its un-handled entries (they are reclaimed "
                "after min_idle_time): %r",
                self.name,
                exc,
            )

    async def stop(self) -> None:
        await super().stop()
        if not self._outstanding:
            await self._stop_lease()

    async def close_now(self) -> None:
        await self.stop()
        await self._stop_lease()

    async def _stop_lease(self) -> None:
        task = self._lease_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
