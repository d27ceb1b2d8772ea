"""The relay: moves committed outbox rows to a transport, in order per key.

One batch is one transaction on the relay's own connection:

1. take ``pg_try_advisory_xact_lock(namespace, bucket)`` on up to ``max_buckets``
   buckets that have unsent rows, oldest first, skipping buckets another relay holds;
2. read the unsent rows of those buckets in ``id`` order (``FOR UPDATE``);
3. hand them to the transport and wait for it to confirm;
4. mark them sent (or delete them when ``retention`` is 0) and commit.

A row's bucket is a hash of its key (its topic when it has none), so every row of a
key is in one bucket and only the relay holding that bucket's lock sends it: replicas
share the work without ever sending two rows of one key out of order. Rows are not
skipped one by one (``SKIP LOCKED``), because a skipped row would let the next row of
its key overtake it; skipping happens per bucket instead. A relay that dies at any
step leaves its transaction to be rolled back, so its rows are sent again (the
at-least-once window: what was sent but not yet marked).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import orjson
from attrs import define

from dotmac.events.bus import EventBus
from dotmac.events.config import create_bus
from dotmac.events.errors import BusStateError, ConfigurationError, TransportUnavailableError
from dotmac.events.transport import Message

from ._sql import TableName, describe_dsn
from .outbox import DEFAULT_TABLE, channel_for

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["OutboxRelay", "RelayStats"]

log = logging.getLogger(__name__)

_ERROR_TEXT_LIMIT = 500


@define
class RelayStats:
    """Counters of one relay since it started."""

    sent: int = 0
    batches: int = 0
    failures: int = 0
    cleaned: int = 0


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class OutboxRelay:
    """Sends the committed rows of an outbox table to a bus's transport.

    ``db`` is a PostgreSQL DSN (``postgresql://user@host/db``). ``target`` is what
    :func:`~dotmac.events.create_bus` takes (a URL, config object or dict) or a
    started :class:`~dotmac.events.EventBus`, which stays the caller's to close.

    Use it as an async context manager (``async with OutboxRelay(...)``) or call
    :meth:`start` and :meth:`close`; :meth:`run` runs until cancelled. Errors of the
    database or the transport are logged and retried with a capped backoff: the
    relay keeps going, and rows stay in the table until a transport confirmed them.

    Settings: ``batch_size`` rows per transaction, at most ``max_buckets`` ordering
    buckets per batch (so replicas share the work), ``poll_interval`` seconds between
    checks when no ``NOTIFY`` arrives, ``send_timeout`` for one transport publish,
    ``retention`` for sent rows (0 deletes them at once), removed every
    ``cleanup_interval`` seconds.
    """

    def __init__(
        self,
        db: str,
        target: str | EventBus | Mapping[str, Any] | object | None = None,
        *,
        schema: str = "public",
        table: str = DEFAULT_TABLE,
        batch_size: int = 500,
        max_buckets: int = 32,
        poll_interval: float = 1.0,
        send_timeout: float = 30.0,
        retention: float | timedelta = timedelta(days=1),
        cleanup_interval: float = 60.0,
        listen: bool = True,
        max_backoff: float = 30.0,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1 or max_buckets < 1:
            raise ConfigurationError("batch_size and max_buckets must be at least 1")
        if poll_interval <= 0 or send_timeout <= 0:
            raise ConfigurationError("poll_interval and send_timeout must be positive")
        self.name = TableName(schema, table)
        if not isinstance(db, str) or urlsplit(db).scheme not in ("postgres", "postgresql"):
            raise ConfigurationError("db must be a postgresql://user@host:port/database DSN")
        self._db = db
        if isinstance(target, EventBus):
            self.bus, self._owns_bus = target, False
        else:
            self.bus, self._owns_bus = create_bus(target), True
        self.batch_size = batch_size
        self.max_buckets = max_buckets
        self.poll_interval = poll_interval
        self.send_timeout = send_timeout
        self.retention = _seconds(retention)
        if self.retention < 0:
            raise ConfigurationError("retention must not be negative")
        self.cleanup_interval = cleanup_interval
        self.listen = listen
        self.max_backoff = max_backoff
        self._connect_kwargs = dict(connect_kwargs or {})
        self._connect_kwargs.setdefault("server_settings", {"application_name": "dotmac-events-outbox-relay"})
        self.stats = RelayStats()
        self._namespace = zlib.crc32(f"dotmac-outbox:{self.name.text}".encode()) & 0x7FFFFFFF
        self._conn: asyncpg.Connection[Any] | None = None
        self._listener: asyncpg.Connection[Any] | None = None
        self._listen_tried = 0.0
        self._last_cleanup = 0.0
        self._wake = asyncio.Event()
        self._cooldowns: dict[int, tuple[int, float]] = {}
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        t = self.name.sql
        self._lock_sql = (
            "SELECT bucket FROM (SELECT bucket, min(id) AS first FROM "  # noqa: S608 - quoted name
            f"{t} WHERE sent_at IS NULL AND NOT (bucket = ANY($3::int[])) "
            "GROUP BY bucket ORDER BY first OFFSET 0) AS pending "
            "WHERE pg_try_advisory_xact_lock($1::int, bucket) LIMIT $2"
        )
        self._rows_sql = (
            f"SELECT id, bucket, topic, key, headers::text AS headers, value FROM {t} "  # noqa: S608 - quoted name
            "WHERE sent_at IS NULL AND bucket = ANY($1::int[]) ORDER BY id LIMIT $2 FOR UPDATE"
        )
        self._done_sql = (
            f"DELETE FROM {t} WHERE id = ANY($1::bigint[])"  # noqa: S608 - quoted name
            if self.retention == 0
            else f"UPDATE {t} SET sent_at = now(), attempts = attempts + 1, last_error = NULL "  # noqa: S608 - quoted name
            "WHERE id = ANY($1::bigint[])"
        )
        self._failed_sql = (
            f"UPDATE {t} SET attempts = attempts + 1, last_error = $2 "  # noqa: S608 - quoted name
            "WHERE id = ANY($1::bigint[]) AND sent_at IS NULL"
        )
        self._cleanup_sql = (
            f"DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE sent_at IS NOT NULL "  # noqa: S608 - quoted name
            "AND sent_at < now() - make_interval(secs => $1) LIMIT $2)"
        )

    def __repr__(self) -> str:
        return f"<OutboxRelay table={self.name.text} db={describe_dsn(self._db)} sent={self.stats.sent}>"

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start the bus (if this relay built it) and the relay's background task."""
        if self._task is not None:
            return
        if self._owns_bus:
            await self.bus.start()
        elif not self.bus.started:
            raise BusStateError("the bus given to OutboxRelay must be started (async with bus)")
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name=f"outbox-relay:{self.name.text}")
        log.info("outbox relay started: %s -> %s", self.name.text, self.bus.transport.name)

    async def close(self, timeout: float | None = None) -> None:
        """Stop: let the batch in flight finish (up to ``timeout``, default ``send_timeout``),
        then release the connections and the bus it built. Idempotent."""
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        if task is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(task), self.send_timeout if timeout is None else timeout
                )
            except asyncio.TimeoutError:
                # The batch's transaction dies with its connection: its rows stay unsent.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for conn in (self._listener, self._conn):
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close(timeout=5.0)
                except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    # A database that stopped answering must not keep the relay from closing.
                    conn.terminate()
        self._listener = self._conn = None
        if self._owns_bus:
            await self.bus.close()
        log.info(
            "outbox relay stopped: %s sent=%d batches=%d failures=%d",
            self.name.text,
            self.stats.sent,
            self.stats.batches,
            self.stats.failures,
        )

    aclose = close

    async def __aenter__(self) -> OutboxRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run(self) -> None:
        """Start and relay until cancelled, then close."""
        await self.start()
        try:
            assert self._task is not None
            await asyncio.shield(self._task)
        finally:
            await self.close()

    # -- work --------------------------------------------------------------------------
    async def _connect(self) -> asyncpg.Connection[Any]:
        try:
            conn: asyncpg.Connection[Any] = await asyncpg.connect(self._db, **self._connect_kwargs)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # asyncpg's messages name host and user, never the password; the DSN is redacted.
            raise ConnectionError(f"cannot connect to {describe_dsn(self._db)}: {exc}") from None
        return conn

    async def _ensure_listener(self) -> None:
        if not self.listen or (self._listener is not None and not self._listener.is_closed()):
            return
        now = time.monotonic()
        if now - self._listen_tried < self.poll_interval:
            return
        self._listen_tried = now
        listener = None
        try:
            listener = await self._connect()
            await listener.add_listener(channel_for(self.name), self._on_notify)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if listener is not None:
                listener.terminate()
            log.warning("outbox relay cannot LISTEN, polling every %ss: %s", self.poll_interval, exc)
            return
        self._listener = listener

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def _wait(self, seconds: float) -> None:
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect()
                await self._ensure_listener()
                sent = await self.relay_once()
                failures = 0
                await self._maybe_cleanup(self._conn)
                if sent == 0:
                    await self._wait(self.poll_interval)
            except Exception as exc:
                failures += 1
                self.stats.failures += 1
                delay = min(self.max_backoff, 0.1 * 2 ** min(failures, 10))
                log.warning(
                    "outbox relay %s: %s: %s (retrying in %.1fs)",
                    self.name.text,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                if self._conn is not None and isinstance(exc, (OSError, asyncpg.InterfaceError)):
                    self._conn.terminate()
                    self._conn = None
                await self._wait(delay)

    async def relay_once(self) -> int:
        """Send one batch now; returns the number of rows sent and marked.

        The background task calls this; it is public for programs and tests that
        drive the relay themselves (without :meth:`start`, on a started bus).
        """
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        self._wake.clear()
        count = await self._batch(self._conn)
        if count:
            self.stats.sent += count
            self.stats.batches += 1
            log.debug("outbox relay %s sent %d rows", self.name.text, count)
        return count

    async def _batch(self, conn: asyncpg.Connection[Any]) -> int:
        async with conn.transaction():
            cooling = self._cooling_buckets()
            found = await conn.fetch(self._lock_sql, self._namespace, self.max_buckets, cooling)
            if not found:
                return 0
            rows = await conn.fetch(self._rows_sql, [r[0] for r in found], self.batch_size)
            if not rows:
                return 0
            groups: dict[int, list[asyncpg.Record]] = {}
            for row in rows:
                groups.setdefault(row["bucket"], []).append(row)
            sent: list[int] = []
            failed: list[tuple[list[asyncpg.Record], BaseException]] = []
            try:
                await self._send(rows)
                sent = [r["id"] for r in rows]
                for bucket in groups:
                    self._cooldowns.pop(bucket, None)
            except Exception as exc:
                if _unavailable(exc):
                    failed = [(group, exc) for group in groups.values()]
                else:
                    sent, failed = await self._send_each(groups)
            # Failures are recorded in the batch's transaction: the rows stay unsent.
            for group, error in failed:
                await conn.execute(self._failed_sql, [r["id"] for r in group], _error_text(error))
                self._cool(group[0]["bucket"], error)
            if failed:
                self.stats.failures += 1
            if sent:
                await conn.execute(self._done_sql, sent)
        return len(sent)

    async def _send(self, rows: list[asyncpg.Record]) -> None:
        messages = [
            Message(topic=r["topic"], value=r["value"], key=r["key"], headers=orjson.loads(r["headers"]))
            for r in rows
        ]
        await asyncio.wait_for(self.bus.transport.publish(messages), self.send_timeout)

    async def _send_each(
        self, groups: dict[int, list[asyncpg.Record]]
    ) -> tuple[list[int], list[tuple[list[asyncpg.Record], BaseException]]]:
        # The batch was refused as a whole. Send bucket by bucket, so that a destination
        # the transport refuses (a full queue, a topic it rejects) holds back only its own
        # bucket; and a refused bucket row by row up to the first refusal, so that a
        # transport which took part of it (a bounded queue) still moves on. Within one
        # send_timeout in total; what is not tried waits for the next batch.
        sent: list[int] = []
        failed: list[tuple[list[asyncpg.Record], BaseException]] = []
        deadline = time.monotonic() + self.send_timeout
        pending = list(groups.values())
        for index, group in enumerate(pending):
            if time.monotonic() > deadline:
                break
            try:
                await self._send(group)
            except Exception as exc:
                if _unavailable(exc):
                    # The broker itself is away: every bucket left waits, none is tried in vain.
                    failed.extend((rest, exc) for rest in pending[index:])
                    break
                error: BaseException = exc
            else:
                sent.extend(r["id"] for r in group)
                self._cooldowns.pop(group[0]["bucket"], None)
                continue
            done = 0
            if len(group) > 1:
                for row in group:
                    if time.monotonic() > deadline:
                        break
                    try:
                        await self._send([row])
                    except Exception as exc:
                        error = exc
                        break
                    sent.append(row["id"])
                    done += 1
            failed.append((group[done:], error))
        return sent, failed

    def _cool(self, bucket: int, error: BaseException) -> None:
        # A bucket whose send failed rests with a growing delay, so the others keep going.
        failures = self._cooldowns.get(bucket, (0, 0.0))[0] + 1
        delay = min(self.max_backoff, 0.1 * 2 ** min(failures, 10))
        self._cooldowns[bucket] = (failures, time.monotonic() + delay)
        log.warning(
            "outbox relay %s: bucket %d not sent (%s: %s); retrying it in %.1fs",
            self.name.text,
            bucket,
            type(error).__name__,
            error,
            delay,
        )

    def _cooling_buckets(self) -> list[int]:
        now = time.monotonic()
        return [b for b, (_, until) in self._cooldowns.items() if until > now]

    async def _maybe_cleanup(self, conn: asyncpg.Connection[Any]) -> None:
        if self.retention == 0:
            return
        now = time.monotonic()
        if now - self._last_cleanup < self.cleanup_interval:
            return
        self._last_cleanup = now
        await self.cleanup(conn)

    async def cleanup(self, conn: asyncpg.Connection[Any] | None = None) -> int:
        """Delete sent rows older than ``retention``; returns how many were deleted."""
        conn = conn or self._conn
        if conn is None:
            conn = self._conn = await self._connect()
        total = 0
        while True:
            status = await conn.execute(self._cleanup_sql, self.retention, 5000)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < 5000:
                break
        if total:
            self.stats.cleaned += total
            log.info("outbox relay %s removed %d sent rows", self.name.text, total)
        return total


def _unavailable(error: BaseException) -> bool:
    # A timeout or a lost connection says the broker is away, not that it refused a row.
    return isinstance(error, (asyncio.TimeoutError, TimeoutError, ConnectionError, TransportUnavailableError))


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:_ERROR_TEXT_LIMIT]
