"""The Redis Streams transport behind ``redis://`` and ``rediss://``.

One stream per topic. Consumer groups are Redis consumer groups; broadcast
subscriptions read with ``XREAD``. The moving parts, per subscription:

- a *reader* connection of its own for blocking reads (``XREADGROUP``/``XREAD``),
  which ``stop()`` wakes with ``CLIENT UNBLOCK`` instead of waiting for the timeout;
- a loop that first recovers the consumer's own pending entries, then reclaims
  entries idle longer than ``min_idle_time`` from dead consumers (``XAUTOCLAIM``),
  then reads new entries, never holding more than ``prefetch`` un-acknowledged;
- a lease task that keeps the idle time of in-flight entries low, so a live
  consumer with a slow handler is not robbed by a reclaimer.

Recovered entries (own pending, reclaimed) go to the core one at a time, and their
delivery counter grows only when they are handed out: a message that crashes the
process is the only one whose count climbs, so ``max_deliveries`` dead-letters it
without dragging the entries fetched alongside it to the dead-letter topic too.

Acknowledgements and releases of all subscriptions go through one writer task that
coalesces them; publishes go through another (one script call per single-stream
batch, a ``MULTI`` block otherwise, then trimming per the configured policy), except
that a publish finding nothing queued or being written does that work in its own
task. The writers' single commands go over connections they hold, not the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import warnings
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Generic, Literal, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from dotmac.events import (
    Capabilities,
    Delivery,
    Message,
    PublishError,
    SubscriptionSpec,
    Transport,
    TransportError,
    TransportSubscription,
    TransportUnavailableError,
)
from dotmac.events.bus import REPLY_TOPIC_PREFIX
from dotmac.events.errors import AuthenticationError, BusStateError, ConfigurationError, EventBusError
from dotmac.events.transport import DeliverySink

from . import _scripts
from . import errors as _errors
from .config import RedisConfig

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py packs without it
    _hiredis_pack = None

__all__ = ["CAPABILITIES", "DATA_FIELD", "KEY_FIELD", "RedisTransport"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    persistent=True,
    consumer_groups=True,
    partitions=False,
    ordering="topic",
    request_reply=True,
    replay_backlog=True,
    readable=True,
    restartable=True,
    batch_publish=True,
)

# Stream entry fields besides the headers. '@' is not an HTTP token character, so no
# header name can take these.
KEY_FIELD = "@key"
DATA_FIELD = "@data"
_KEY_FIELD_B = KEY_FIELD.encode()
_DATA_FIELD_B = DATA_FIELD.encode()

# The core's per-bus reply topics (``EventBus._reply_topic``): their streams expire
# when nobody publishes to them and are deleted when their subscription stops.
_DLQ_MARKER = "x-dlq-original-topic"

# Idle time given to released entries: far above any sane min_idle_time, so the next
# reclaim by any live member takes them at once.
RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000

_MAX_PUBLISH_BATCH = 1000
_RECLAIM_BATCH = 100
_SWEEP_BATCH = 500
_STOP_GRACE = 5.0


# -- helpers -----------------------------------------------------------------------------
def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _retriable(exc: BaseException) -> bool:
    """Whether repeating the operation later may succeed (a lost or busy server)."""
    return _errors.is_retriable(exc)


_redis_message = _errors.redis_message


def _transport_error(what: str, exc: BaseException) -> EventBusError:
    return _errors.transport_error(what, exc)


def _entry_message(topic: str, entry_id: Any, fields: Any) -> Message:
    """A received stream entry as a :class:`Message` (fields as a flat list or a dict)."""
    if isinstance(fields, list):
        pairs = iter(fields)
        items: dict[Any, Any] = dict(zip(pairs, pairs, strict=True))
    else:
        items = dict(fields)
    value = items.pop(_DATA_FIELD_B, b"")
    key = items.pop(_KEY_FIELD_B, None)
    try:
        # The usual reply: every name and value a bytes object of valid UTF-8.
        headers = {name.decode(): raw.decode() for name, raw in items.items()}
    except (AttributeError, UnicodeDecodeError):
        headers = {_text(name): _text(raw) for name, raw in items.items()}
    return Message(
        topic=topic,
        value=value if isinstance(value, bytes) else _text(value).encode(),
        key=None if key is None else _text(key),
        headers=headers,
        position=_text(entry_id),
        timestamp=_entry_time(entry_id),
    )


def _entry_time(entry_id: Any) -> datetime | None:
    """The time in a stream entry id (``<milliseconds>-<sequence>``)."""
    try:
        millis = int(_text(entry_id).partition("-")[0])
        return datetime.fromtimestamp(millis / 1000, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def _streams(reply: Any) -> Iterable[tuple[Any, Any]]:
    """(stream, entries) pairs of an XREAD/XREADGROUP reply (RESP2 list or RESP3 map)."""
    if isinstance(reply, dict):
        return reply.items()
    return [(item[0], item[1]) for item in reply]


def _entry_fields(message: Message) -> list[Any]:
    fields: list[Any] = []
    for name, value in message.headers.items():
        fields.append(name)
        fields.append(value)
    if message.key is not None:
        fields.append(KEY_FIELD)
        fields.append(message.key)
    fields.append(DATA_FIELD)
    fields.append(message.value)
    return fields


class _Backoff:
    """Exponential backoff with full jitter, for reconnect loops."""

    def __init__(self, cap: float, base: float = 0.05) -> None:
        self.cap = cap
        self.base = base
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** min(self.failures, 16)))  # noqa: S311

    def reset(self) -> None:
        self.failures = 0


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``event``; True if it is set."""
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


# -- connections -------------------------------------------------------------------------
class _FastPacking(Connection):
    """A connection that packs commands with hiredis (in C) rather than redis-py's
    pure-Python packer, which costs about as much per event as the rest of a publish,
    and that arms the socket write timeout only for a write that has to wait.

    redis-py bounds every write with ``asyncio.wait_for``, which on Python 3.11 runs
    the write in a task of its own: a task, a timer and an event-loop pass per
    command. A command the socket takes whole needs none of them; only a write left
    buffered (a slow or stuck peer) is drained under ``socket_timeout``.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        if not self.socket_timeout or writer is None or not self.is_connected:
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        try:
            if isinstance(command, str):
                command = command.encode()
            # One write() rather than writelines(): on some Python releases (3.13.0)
            # writelines() does not pause the protocol, so drain() would not wait for a
            # stuck peer and the timeout below would never fire.
            writer.write(command if isinstance(command, bytes) else b"".join(command))
            transport = writer.transport
            if transport.get_write_buffer_size() or transport.is_closing():
                await asyncio.wait_for(writer.drain(), self.socket_timeout)
        except asyncio.TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc!r}") from exc
        except BaseException:
            # A write cut short leaves the protocol state unknown (as in redis-py).
            await self.disconnect(nowait=True)
            raise

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        if _hiredis_pack is None:
            return super().pack_command(*args)
        first = args[0]
        # Like redis-py: a command name such as "SCRIPT LOAD" is two arguments.
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [_hiredis_pack(args)]
        except TypeError:
            # A type hiredis does not take (bytearray) or refuses (bool, None):
            # redis-py packs it or raises its own DataError.
            return super().pack_command(*args)


class _Connection(_FastPacking):
    pass


class _SSLConnection(_FastPacking, SSLConnection):
    pass


# -- deliveries --------------------------------------------------------------------------
_PENDING, _ACKED, _RELEASED = 0, 1, 2


class _RedisDelivery(Delivery):
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

    def __init__(self, sub: _Subscription, key: str, message: Message, delivery_count: int) -> None:
        self.message = message
        self.delivery_count = delivery_count
        self.ordering_key: Hashable | None = message.key
        self.key = key
        self.entry_id = message.position or ""
        self._sub = sub
        self._state = _PENDING
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
        # The ack writer's own future: no task per acknowledged entry. Settling rides
        # on the future, so a cancelled waiter settles the entry too.
        if self._state != _PENDING:
            return None
        self._state = _ACKED
        try:
            written = self._sub._acknowledge(self)
        except BaseException:
            self._sub._settle(self)
            raise
        if written is None:
            self._sub._settle(self)
            return None
        written.add_done_callback(self._written)
        return written

    def _written(self, _future: asyncio.Future[None]) -> None:
        self._sub._settle(self)

    async def release(self) -> None:
        if self._state != _PENDING:
            return
        self._state = _RELEASED
        try:
            await self._sub._release(self)
        finally:
            self._sub._settle(self)

    def __repr__(self) -> str:
        return f"<RedisDelivery {self.key} {self.entry_id} count={self.delivery_count}>"


# -- connections of their own ----------------------------------------------------------
class _Link:
    """A connection of its own, outside the pool, for one command at a time.

    Blocking reads must not hold a pool connection; the writers' hot paths (a
    publish, a batch of acks) use links too, because checking a connection out of
    redis-py's pool and back costs more client time than the command itself.
    After a failure or a cancellation the connection is dropped and the next
    command opens a new one; an error reply leaves it in use.
    """

    blocking = False

    def __init__(self, transport: RedisTransport) -> None:
        self._transport = transport
        self._conn: Connection | None = None
        self._shut = False
        self.client_id: int | None = None

    async def command(self, *args: Any) -> Any:
        if self._shut:
            raise RedisConnectionError("the connection was closed with the transport")
        conn = self._conn
        if conn is None or not conn.is_connected:
            await self.close()
            conn = self._transport._make_link_connection(blocking=self.blocking)
            self._conn = conn
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                await self._on_connect(conn)
            except BaseException:
                await self.close()
                raise
        try:
            await conn.send_command(*args)
            return await conn.read_response()
        except ResponseError:
            raise
        except BaseException:
            # After a failure or a cancellation the connection state is unknown.
            await self.close()
            raise

    async def _on_connect(self, conn: Connection) -> None:
        """Hook: set up a new connection."""

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self.client_id = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def shut(self) -> None:
        """Close for good: later commands fail instead of connecting again."""
        self._shut = True
        await self.close()


class _Reader(_Link):
    """A link for blocking reads that knows its server-side client id (``stop()``
    unblocks a read with it) and whose socket timeout outlasts the BLOCK time."""

    blocking = True

    async def _on_connect(self, conn: Connection) -> None:
        try:
            await conn.send_command("CLIENT", "ID")
            self.client_id = int(await conn.read_response())
        except ResponseError:
            # Without CLIENT ID (ACL) stop() falls back to cancelling the read.
            self.client_id = None


# -- subscriptions -----------------------------------------------------------------------
class _Subscription(TransportSubscription):
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
        self._outstanding: dict[tuple[str, str], _RedisDelivery] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._phase: Literal["idle", "read", "sink"] = "idle"
        self._reader = _Reader(transport)
        self._task: asyncio.Task[None] | None = None
        self._backoff = _Backoff(self._config.reconnect_backoff_max)
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
        await self._reader.close()
        await self._after_stop()
        self._transport._forget(self)

    async def _unblock(self) -> None:
        client_id = self._reader.client_id
        if client_id is None:
            return
        try:
            await self._transport._redis().execute_command(  # type: ignore[no-untyped-call]
                "CLIENT", "UNBLOCK", client_id
            )
        except RedisError as exc:
            log.debug("CLIENT UNBLOCK failed for %s: %r", self.name, exc)
            self._reader.client_id = None

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
                await self._reader.close()
                await self._on_error(exc)
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
            level = logging.WARNING if _retriable(exc) else logging.ERROR
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
        await _wait(self._stopping, delay)
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
    ) -> _RedisDelivery:
        delivery = _RedisDelivery(self, key, message, delivery_count)
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

    async def _read(self, *args: Any) -> Any:
        self._phase = "read"
        try:
            return await self._reader.command(*args)
        finally:
            self._phase = "idle"

    def _count_for_read(self, room: int) -> int:
        # COUNT applies to each stream of a multi-stream read.
        return max(1, -(-room // len(self._keys)))

    # -- delivery callbacks --------------------------------------------------------------
    def _settle(self, delivery: _RedisDelivery) -> None:
        outstanding = self._outstanding
        outstanding.pop((delivery.key, delivery.entry_id), None)
        if len(outstanding) <= self._refill_at:
            # Wake a loop waiting for room only once it may read again.
            self._room.set()
        if delivery._settled is not None:
            delivery._settled.set()

    def _acknowledge(self, delivery: _RedisDelivery) -> asyncio.Future[None] | None:
        """Hook: start making the acknowledgement durable; the future is done once it
        is (``None``: nothing to wait for)."""
        return None

    async def _release(self, delivery: _RedisDelivery) -> None:
        """Hook: make the entry available for redelivery."""


class _GroupSubscription(_Subscription):
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
            raise _transport_error(f"cannot join group {self.group!r}", exc) from exc
        self._start_loop()
        self._lease_task = asyncio.create_task(self._lease(), name=f"dotmac-events-redis-lease-{self.name}")

    async def _create_group(self, client: aioredis.Redis, key: str, start: str) -> bool:
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
        for stream, entries in _streams(reply):
            key = _text(stream)
            topic = self._keys[key]
            for entry_id, fields in entries:
                if fields is None:
                    continue
                batch.append((key, _entry_message(topic, entry_id, fields)))
        for i, (key, message) in enumerate(batch):
            if self._stopping.is_set():
                # Fetched but never handed out: stop() releases what this consumer owns.
                log.debug("subscription %s stopping with %d fetched entries", self.name, len(batch) - i)
                return
            await self._hand(key, message, 1)

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
                ids = [_text(i) for i in raw]
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
                claimed = [_text(i) for i in ids if (key, _text(i)) not in self._outstanding]
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
                cursor = _text(next_cursor)
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
                message = _entry_message(topic, result[1], result[2])
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
                    ", ".join(_text(r) for r in removed),
                )

    # -- leases --------------------------------------------------------------------------
    async def _lease(self) -> None:
        """Keep this consumer's in-flight and reserved entries from looking abandoned."""
        interval = max(0.05, self._config.min_idle_time / 3)
        closing = self._transport._closing
        while not closing.is_set():
            if await _wait(closing, interval):
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
        if delivery is not None and delivery._state == _PENDING:
            delivery._withdrawn = True
            self._transport.counters["withdrawn"] += 1
            log.info(
                "entry %s of %s was reclaimed by another member; withdrawn from %s", entry_id, key, self.name
            )
            self._settle(delivery)

    # -- acks ----------------------------------------------------------------------------
    def _acknowledge(self, delivery: _RedisDelivery) -> asyncio.Future[None]:
        return self._transport._writer.put(("ack", delivery.key, self.group, self.name, delivery.entry_id, 0))

    async def _release(self, delivery: _RedisDelivery) -> None:
        self._transport.counters["released"] += 1
        writer = self._transport._writer
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
                    ids = [_text(i) for i in raw]
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


class _BroadcastSubscription(_Subscription):
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
                self._last[key] = _text(newest[0][0]) if newest else "0-0"
        except RedisError as exc:
            raise _transport_error("cannot subscribe", exc) from exc
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
        for stream, entries in _streams(reply):
            key = _text(stream)
            topic = self._keys[key]
            for entry_id, fields in entries:
                if self._stopping.is_set():
                    return
                self._last[key] = _text(entry_id)
                if fields is None:
                    continue
                await self._hand(key, _entry_message(topic, entry_id, fields), 1)

    async def _after_stop(self) -> None:
        reply_keys = [k for k, t in self._keys.items() if t.startswith(REPLY_TOPIC_PREFIX)]
        if reply_keys:
            with contextlib.suppress(Exception):
                await self._transport._redis().delete(*reply_keys)


# -- writers -----------------------------------------------------------------------------
_T = TypeVar("_T")
_AckItem = tuple[str, str, str, str, str, int]  # op, key, group, consumer, entry id, delivery count


class _Coalescer(Generic[_T]):
    """A task that writes what concurrent callers submit, in batches.

    ``_enqueue`` returns once the batch holding its item was written (or raises what
    the write raised); ``_write`` settles every future of a batch. ``_write_now``
    lets a caller that finds nothing queued and nothing being written do its write
    in its own task, saving the trip to the writer task and back; callers that come
    meanwhile queue up for the writer task, which batches them while that write is
    still in flight.
    """

    def __init__(self, transport: RedisTransport, task_name: str) -> None:
        self._transport = transport
        self._task_name = task_name
        self._queue: deque[tuple[_T, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._batch: list[tuple[_T, asyncio.Future[None]]] = []  # being written by the task
        self._direct = 0  # writes being done by callers in their own tasks
        self._link = _Link(transport)  # the task's
        self._direct_link = _Link(transport)  # for callers writing in their own tasks

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    def _check_open(self) -> None:
        if self._task is None or self._task.done():
            raise BusStateError("the redis transport is closed")

    def put(self, item: _T) -> asyncio.Future[None]:
        """Queue ``item`` for the writer task; the future settles once it is written."""
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._idle.clear()
        self._wake.set()
        return future

    async def _enqueue(self, item: _T) -> None:
        await self.put(item)

    def _quiet(self) -> bool:
        """Nothing queued and nothing being written."""
        return not self._queue and not self._batch and not self._direct

    async def _write_now(self, item: _T) -> None:
        """Write ``item`` in the caller's task (see the class docstring); only when
        :meth:`_quiet`. A cancelled caller leaves nothing behind: what was
        queued meanwhile is the writer task's either way."""
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._direct += 1
        self._idle.clear()
        try:
            await self._write([(item, future)], self._direct_link)
        finally:
            self._direct -= 1
            self._check_idle()
        future.result()

    def _check_idle(self) -> None:
        if self._quiet():
            self._idle.set()

    async def drain(self) -> None:
        await self._idle.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # What was queued, and a batch the cancellation cut short, fail rather than
        # leave their callers waiting.
        for _item, future in (*self._batch, *self._queue):
            if not future.done():
                future.set_exception(TransportUnavailableError("the redis transport was closed"))
        self._batch = []
        self._queue.clear()
        self._check_idle()
        await self._link.shut()
        await self._direct_link.shut()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._check_idle()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._batch = self._take()
            await self._write(self._batch, self._link)
            self._batch = []

    def _take(self) -> list[tuple[_T, asyncio.Future[None]]]:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def _write(self, batch: list[tuple[_T, asyncio.Future[None]]], link: _Link) -> None:
        """Write ``batch`` (single-command writes on ``link``) and settle its futures."""
        raise NotImplementedError


class _AckWriter(_Coalescer[_AckItem]):
    """Coalesces acks and releases of every subscription into pipelines."""

    def __init__(self, transport: RedisTransport) -> None:
        super().__init__(transport, "dotmac-events-redis-acks")

    async def submit(self, op: str, key: str, group: str, consumer: str, entry_id: str, count: int) -> None:
        await self._enqueue((op, key, group, consumer, entry_id, count))

    async def _write(self, batch: list[tuple[_AckItem, asyncio.Future[None]]], link: _Link) -> None:
        transport = self._transport
        acks: dict[tuple[str, str], list[str]] = {}
        releases: dict[tuple[str, str, str], list[Any]] = {}
        for (op, key, group, consumer, entry_id, count), _future in batch:
            if op == "ack":
                acks.setdefault((key, group), []).append(entry_id)
            else:
                releases.setdefault((key, group, consumer), []).extend((entry_id, count))
        deadline = time.monotonic() + transport.config.ack_timeout
        backoff = _Backoff(transport.config.reconnect_backoff_max)
        error: BaseException | None = None
        while True:
            try:
                results = await self._send(acks, releases, link)
            except Exception as exc:
                if _retriable(exc) and time.monotonic() < deadline and not transport._closing.is_set():
                    log.debug("ack write failed, retrying: %r", exc)
                    await asyncio.sleep(backoff.next())
                    continue
                what = "acknowledgement not written"
                if _retriable(exc):
                    what += f" (retried for {transport.config.ack_timeout}s)"
                error = _transport_error(what, exc)
                break
            for result in results:
                if isinstance(result, ResponseError) and "NOGROUP" in str(result):
                    log.warning("acknowledged entries of a group that no longer exists: %s", result)
                elif isinstance(result, Exception):
                    error = _transport_error("acknowledgement not written", result)
            break
        for _item, future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def _send(
        self,
        acks: dict[tuple[str, str], list[str]],
        releases: dict[tuple[str, str, str], list[Any]],
        link: _Link,
    ) -> list[Any]:
        if len(acks) == 1 and not releases:
            # The common case (one subscription acking): one command, no pipeline.
            ((key, group), ids), *_ = acks.items()
            try:
                return [await link.command("XACK", key, group, *ids)]
            except ResponseError as exc:
                return [exc]
        client = self._transport._redis()
        async with client.pipeline(transaction=False) as pipe:
            for (key, group), ids in acks.items():
                pipe.xack(key, group, *ids)
            for (key, group, consumer), pairs in releases.items():
                await self._transport._scripts["release"](
                    keys=[key], args=[group, consumer, RELEASED_IDLE_MS, *pairs], client=pipe
                )
            return list(await pipe.execute(raise_on_error=False))


class _Publisher(_Coalescer[Sequence[Message]]):
    """Coalesces concurrent publishes into ``MULTI`` pipelines; then trims."""

    def __init__(self, transport: RedisTransport) -> None:
        super().__init__(transport, "dotmac-events-redis-publisher")
        self._warned: dict[str, float] = {}

    async def submit(self, messages: Sequence[Message]) -> None:
        if self._quiet():
            await self._write_now(messages)
        else:
            await self._enqueue(messages)

    def _take(self) -> list[tuple[Sequence[Message], asyncio.Future[None]]]:
        batch: list[tuple[Sequence[Message], asyncio.Future[None]]] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0][0]) <= _MAX_PUBLISH_BATCH):
            item = self._queue.popleft()
            batch.append(item)
            size += len(item[0])
        return batch

    async def _write(self, batch: list[tuple[Sequence[Message], asyncio.Future[None]]], link: _Link) -> None:
        transport = self._transport
        config = transport.config
        flat: list[tuple[int, str, Message]] = []
        dead_letter_keys: set[str] = set()
        reply_keys: set[str] = set()
        for index, (messages, _future) in enumerate(batch):
            for message in messages:
                key = config.stream_key(message.topic)
                flat.append((index, key, message))
                if _DLQ_MARKER in message.headers:
                    dead_letter_keys.add(key)
                if message.topic.startswith(REPLY_TOPIC_PREFIX):
                    reply_keys.add(key)
        maxlen = config.max_stream_length
        trim_keys: list[str] = []
        if maxlen is not None:
            trim_keys = sorted({key for _i, key, _m in flat} - dead_letter_keys - reply_keys)
        deadline = time.monotonic() + config.publish_timeout
        backoff = _Backoff(config.reconnect_backoff_max)
        while True:
            try:
                results = await self._send(flat, reply_keys, trim_keys, link)
            except Exception as exc:
                if _retriable(exc) and time.monotonic() < deadline and not transport._closing.is_set():
                    log.debug("publish failed, retrying: %r", exc)
                    await asyncio.sleep(backoff.next())
                    continue
                retried = _retriable(exc)
                what = (
                    f"publish failed (retried for {config.publish_timeout}s)" if retried else "publish failed"
                )
                error = _transport_error(what, exc)
                if isinstance(error, TransportError) and not isinstance(
                    error, (TransportUnavailableError, AuthenticationError)
                ):
                    error = PublishError(str(error), retriable=error.retriable)
                for _messages, future in batch:
                    if not future.done():
                        future.set_exception(error)
                return
            break
        failed: dict[int, BaseException] = {}
        for (index, key, _message), result in zip(flat, results, strict=False):
            if isinstance(result, Exception) and index not in failed:
                refused = _transport_error(f"Redis refused the entry for stream {key!r}", result)
                failed[index] = (
                    refused
                    if isinstance(refused, (ConfigurationError, AuthenticationError))
                    else PublishError(f"Redis refused the entry for stream {key!r}: {_redis_message(result)}")
                )
        if maxlen is not None:
            # Trim before confirming, so a publish returns with the stream within its
            # policy (a failed trim is logged and retried at the next publish).
            lengths = results[len(results) - len(trim_keys) :]
            slack = max(1, maxlen // 100)
            for key, length in zip(trim_keys, lengths, strict=True):
                if isinstance(length, int) and length > maxlen + slack:
                    await self._trim(key, maxlen)
        published = 0
        for index, (messages, future) in enumerate(batch):
            if index in failed:
                if not future.done():
                    future.set_exception(failed[index])
            else:
                published += len(messages)
                if not future.done():
                    future.set_result(None)
        transport.counters["published"] += published

    async def _send(
        self, flat: list[tuple[int, str, Message]], reply_keys: set[str], trim_keys: list[str], link: _Link
    ) -> list[Any]:
        """Write the entries; results per entry (``None`` or an error), then the lengths
        of ``trim_keys``."""
        transport = self._transport
        client = transport._redis()
        keys = {key for _i, key, _m in flat}
        ttl = int(transport.config.reply_ttl)
        if len(keys) == 1:
            (key,) = keys
            if len(flat) == 1 and not trim_keys and key not in reply_keys:
                # Nothing to trim or expire: a plain XADD does it.
                await link.command("XADD", key, "*", *_entry_fields(flat[0][2]))
                return [None]
            # One stream (the usual publish or publish_many): one script call, atomic
            # like MULTI, and it returns the length for the trim check.
            args: list[Any] = [ttl if key in reply_keys else 0]
            for _index, _key, message in flat:
                fields = _entry_fields(message)
                args.append(len(fields))
                args.extend(fields)
            length = await transport._eval(link, "add", [key], args)
            return [None] * len(flat) + ([int(length)] if trim_keys else [])
        async with client.pipeline(transaction=True) as pipe:
            for _index, key, message in flat:
                pipe.execute_command("XADD", key, "*", *_entry_fields(message))
            for key in sorted(reply_keys):
                pipe.expire(key, ttl)
            for key in trim_keys:
                pipe.xlen(key)
            results = list(await pipe.execute(raise_on_error=False))
        del results[len(flat) : len(flat) + len(reply_keys)]
        return results

    async def _trim(self, key: str, maxlen: int) -> None:
        transport = self._transport
        policy = transport.config.trim_policy
        try:
            result = await transport._script("trim")(
                keys=[key], args=[maxlen, policy], client=transport._redis()
            )
            removed, kept, unread, unacked = (int(v) for v in result)
        except Exception as exc:
            log.warning("trimming %s failed (retried at the next publish): %r", key, exc)
            return
        counters = transport.counters
        counters["trimmed"] += removed
        counters["trimmed_unread"] += unread
        counters["trimmed_unacknowledged"] += unacked
        if kept:
            counters["trim_deferred"] += 1
            transport.over_limit[key] = kept
        else:
            transport.over_limit.pop(key, None)
        now = time.monotonic()
        if (kept or unread or unacked) and now - self._warned.get(key, -1e9) >= 60.0:
            self._warned[key] = now
            if kept:
                log.warning(
                    "stream %s is %d entries over max_stream_length=%d: consumer groups have not "
                    "acknowledged them, so trim_policy='safe' keeps them",
                    key,
                    kept,
                    maxlen,
                )
            if unread or unacked:
                log.warning(
                    "trimmed %d entries of %s that a consumer group had not read and %d it had "
                    "not acknowledged (trim_policy='maxlen', max_stream_length=%d); "
                    "%d unread and %d unacknowledged so far",
                    unread,
                    key,
                    unacked,
                    maxlen,
                    counters["trimmed_unread"],
                    counters["trimmed_unacknowledged"],
                )


# -- the transport -----------------------------------------------------------------------
class RedisTransport(Transport):
    """Redis Streams: one stream per topic, consumer groups, reclaim of abandoned entries.

    ``counters`` (see :meth:`stats`) count what was published, trimmed, trimmed
    unread, reclaimed, released and lost.
    """

    name = "redis"
    capabilities = CAPABILITIES

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        # Used by the core when ConsumerOptions.max_deliveries is None.
        self.default_max_deliveries = config.max_deliveries
        self._client: aioredis.Redis | None = None
        self._pool: BlockingConnectionPool | None = None
        self._scripts: dict[str, Any] = {}
        self._subs: set[_Subscription] = set()
        self._closing = asyncio.Event()
        self._publisher = _Publisher(self)
        self._writer = _AckWriter(self)
        self._started = False
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "published",
                "trimmed",
                "trimmed_unread",
                "trimmed_unacknowledged",
                "trim_deferred",
                "reclaim_runs",
                "reclaimed",
                "released",
                "withdrawn",
                "pending_entries_lost",
                "reconnects",
            ),
            0,
        )
        self.over_limit: dict[str, int] = {}

    def describe(self) -> Mapping[str, object]:
        return self.config.describe()

    def __repr__(self) -> str:
        c = self.config
        scheme = "rediss" if c.ssl else "redis"
        return f"<RedisTransport {scheme}://{c.host}:{c.port}/{c.db} prefix={c.key_prefix!r}>"

    def stats(self) -> dict[str, Any]:
        """Counters since start, and the streams currently kept over their cap."""
        return {**self.counters, "over_limit": dict(self.over_limit)}

    # -- connections ---------------------------------------------------------------------
    def _connection_kwargs(self) -> dict[str, Any]:
        c = self.config
        kwargs: dict[str, Any] = {
            "host": c.host,
            "port": c.port,
            "db": c.db,
            "username": c.username,
            "password": c.password,
            "socket_timeout": c.socket_timeout,
            "socket_connect_timeout": c.socket_connect_timeout,
            "socket_keepalive": True,
            "client_name": c.client_name,
            # Reconnects and retries are done here, with knowledge of what is safe.
            "retry": Retry(NoBackoff(), 0),
            # RESP2 on every redis-py version: replies parsed here keep one shape.
            "protocol": 2,
        }
        if c.ssl:
            kwargs.update(
                ssl_ca_certs=c.ssl_ca_certs,
                ssl_certfile=c.ssl_certfile,
                ssl_keyfile=c.ssl_keyfile,
                ssl_cert_reqs=c.ssl_cert_reqs,
                ssl_check_hostname=c.ssl_check_hostname,
            )
            if c.ssl_password is not None:
                kwargs["ssl_password"] = c.ssl_password
        return kwargs

    def _connection_class(self) -> type[Connection]:
        return _SSLConnection if self.config.ssl else _Connection

    def _make_link_connection(self, *, blocking: bool) -> Connection:
        kwargs = self._connection_kwargs()
        if blocking:
            # A blocking read must outlive its BLOCK time; a dead server still times out.
            kwargs["socket_timeout"] = self.config.socket_timeout + self.config.block_timeout
        return self._connection_class()(**kwargs)

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BusStateError("the redis transport is not started")
        return self._client

    def _script(self, name: str) -> Any:
        return self._scripts[name]

    async def _eval(self, link: _Link, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered script on ``link``."""
        script = self._scripts[name]
        try:
            return await link.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # The server's script cache was emptied (restart, SCRIPT FLUSH); EVAL
            # runs the script and caches it again.
            return await link.command("EVAL", script.script, len(keys), *keys, *args)

    async def _touch(
        self, key: str, group: str, consumer: str, ids: Sequence[str], idle_ms: int
    ) -> tuple[int, list[str]]:
        """Set the idle time of entries ``consumer`` owns; returns how many, and the
        ids another consumer owns now."""
        if not ids:
            return 0, []
        touched, taken = await self._scripts["touch"](
            keys=[key], args=[group, consumer, idle_ms, *ids], client=self._redis()
        )
        return int(touched), [_text(i) for i in taken]

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        config = self.config
        if config.ssl and config.ssl_insecure:
            log.warning(
                "TLS to %s:%s runs with certificate or host name checks OFF (ssl_insecure=True)",
                config.host,
                config.port,
            )
        # One direct connection first: its errors (refused credentials, rejected
        # certificate) are precise, where a pool may report them as "no connection".
        probe = self._connection_class()(**self._connection_kwargs())
        try:
            await probe.connect()  # type: ignore[no-untyped-call]
            await probe.send_command("PING")
            await probe.read_response()
        except Exception as exc:
            where = f"{config.host}:{config.port}"
            raise _transport_error(f"cannot connect to Redis at {where}", exc) from None
        finally:
            with contextlib.suppress(Exception):
                await probe.disconnect()
        pool = BlockingConnectionPool(
            connection_class=self._connection_class(),
            max_connections=config.max_connections,
            timeout=config.socket_connect_timeout,
            **self._connection_kwargs(),
        )
        client = aioredis.Redis(connection_pool=pool)
        self._pool = pool
        self._client = client
        self._scripts = {
            "trim": client.register_script(_scripts.TRIM),
            "claim_one": client.register_script(_scripts.CLAIM_ONE),
            "add": client.register_script(_scripts.ADD),
            "touch": client.register_script(_scripts.TOUCH),
            "release": client.register_script(_scripts.RELEASE),
            "reclaim": client.register_script(_scripts.RECLAIM),
            "own_pending": client.register_script(_scripts.OWN_PENDING),
            "forget_idle_consumers": client.register_script(_scripts.FORGET_IDLE_CONSUMERS),
        }
        self._closing = asyncio.Event()
        self._publisher = _Publisher(self)
        self._writer = _AckWriter(self)
        self._publisher.start()
        self._writer.start()
        self._started = True
        log.debug("redis transport connected: %s", self.describe())

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        for sub in list(self._subs):
            await sub.close_now()
        # Publishes and acks already accepted are written before the connections go.
        for drain in (self._publisher.drain, self._writer.drain):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drain(), self.config.socket_timeout)
        self._closing.set()
        await self._publisher.stop()
        await self._writer.stop()
        for sub in list(self._subs):
            await sub.close_now()
        client, pool = self._client, self._pool
        self._client = self._pool = None
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.disconnect()

    def __del__(self, _warnings: Any = warnings) -> None:
        if getattr(self, "_started", False):
            _warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)

    def _forget(self, sub: _Subscription) -> None:
        if isinstance(sub, _GroupSubscription) and sub._outstanding:
            return  # its lease task still guards deliveries the core holds
        self._subs.discard(sub)

    # -- transport API -------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        if not self._started:
            raise BusStateError("the redis transport is not started")
        if not messages:
            return
        await self._publisher.submit(messages)

    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        if not self._started:
            raise BusStateError("the redis transport is not started")
        sub: _GroupSubscription | _BroadcastSubscription
        if spec.group is None:
            sub = _BroadcastSubscription(self, spec, sink)
        else:
            sub = _GroupSubscription(self, spec, sink)
        await sub.open()
        self._subs.add(sub)
        return sub

    async def read(self, topic: str, *, limit: int = 100) -> list[Message]:
        key = self.config.stream_key(topic)
        try:
            entries = await self._redis().xrange(key, "-", "+", count=limit)
        except RedisError as exc:
            raise _transport_error(f"cannot read {topic!r}", exc) from exc
        return [_entry_message(topic, entry_id, fields) for entry_id, fields in entries or ()]
