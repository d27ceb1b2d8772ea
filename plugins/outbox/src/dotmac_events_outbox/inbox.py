"""The idempotent inbox: a redelivered event is acked without calling its handler again.

A store remembers, per consumer group, the ``event_id`` of every event whose handler
returned, for a retention window. :func:`idempotent` wraps a handler for
``bus.subscribe``: it skips events the store has seen and records an event only
after its handler returned, so a handler that failed is called again on retry.

With :class:`PostgresInbox` the record can instead be written in the handler's own
database transaction (:meth:`PostgresInbox.transactional`): the handler's writes and
the record commit together or not at all, which makes database side effects
exactly-once even when the event is delivered twice.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from dotmac.events.errors import ConfigurationError
from dotmac.events.event import Event

from ._sql import TableName, inbox_ddl
from .outbox import install

if TYPE_CHECKING:
    import asyncpg

    from .outbox import PgConnection

__all__ = ["InboxStore", "MemoryInboxStore", "PostgresInbox", "idempotent"]

log = logging.getLogger(__name__)

R = TypeVar("R")
DEFAULT_RETENTION = timedelta(days=7)


def _seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ConfigurationError(f"the inbox retention must be positive, got {value!r}")
    return seconds


class InboxStore(abc.ABC):
    """Where handled event ids are remembered, per consumer group.

    ``retention`` (seconds or a ``timedelta``) is how long an id is remembered: it must
    be longer than any redelivery can take (the broker's redelivery timeouts plus the
    retry policy's total wait), or a late redelivery would be handled again.
    """

    retention: float

    @abc.abstractmethod
    async def seen(self, group: str, event_id: str) -> bool:
        """``True`` if the event was recorded as handled for ``group`` (and not expired)."""

    @abc.abstractmethod
    async def mark(self, group: str, event_id: str) -> None:
        """Record the event as handled for ``group``."""

    async def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release what the store holds (connections it opened itself)."""


class MemoryInboxStore(InboxStore):
    """An in-process store for tests and single-process programs (lost at exit)."""

    def __init__(
        self, retention: float | timedelta = DEFAULT_RETENTION, *, max_entries: int = 1_000_000
    ) -> None:
        self.retention = _seconds(retention)
        self.max_entries = max_entries
        self._expires: dict[tuple[str, str], float] = {}

    async def seen(self, group: str, event_id: str) -> bool:
        expires = self._expires.get((group, event_id))
        return expires is not None and expires > time.monotonic()

    async def mark(self, group: str, event_id: str) -> None:
        now = time.monotonic()
        key = (group, event_id)
        # Insertion order is expiry order (one retention for all), so the oldest
        # records are at the front: expired ones go first, then, when still full, the
        # oldest live one, which can only cause a duplicate, never a loss.
        self._expires.pop(key, None)
        expires = self._expires
        while expires:
            oldest = next(iter(expires))
            if expires[oldest] > now and len(expires) < self.max_entries:
                break
            del expires[oldest]
        expires[key] = now + self.retention


def _check_group(group: str) -> str:
    if not isinstance(group, str) or not group:
        raise ConfigurationError(f"an inbox needs a non-empty consumer group name, got {group!r}")
    return group


def idempotent(
    handler: Callable[[Event], Awaitable[R] | R], *, store: InboxStore, group: str
) -> Callable[[Event], Awaitable[R | None]]:
    """Wrap ``handler`` so an event already handled by ``group`` is acked without a call.

    The event is recorded after ``handler`` returned; an exception leaves it
    unrecorded, so the runner's retries and redeliveries call the handler again.
    Between the handler's return and the record a crash can still cause one more
    call (at-least-once); for database writes, :meth:`PostgresInbox.transactional`
    closes that gap. ``group`` should be the subscription's group.
    """
    _check_group(group)

    async def handle_once(event: Event) -> R | None:
        event_id = event.metadata.event_id
        if await store.seen(group, event_id):
            log.debug("inbox: %s already handled by %s, skipped", event_id, group)
            return None
        result = handler(event)
        if inspect.isawaitable(result):
            result = await result
        await store.mark(group, event_id)
        return result

    handle_once.__name__ = getattr(handler, "__name__", "handler")
    handle_once.__qualname__ = getattr(handler, "__qualname__", handle_once.__name__)
    handle_once.__doc__ = getattr(handler, "__doc__", None)
    return handle_once


class PostgresInbox(InboxStore):
    """An inbox table in PostgreSQL, used through an asyncpg pool.

    As a store, it serves :func:`idempotent`. Its own mode,
    :meth:`transactional`, runs the handler inside a transaction that first inserts the
    event's record: the handler gets the connection, does its writes on it, and they
    commit together with the record. A concurrent duplicate waits on the record's key
    until the first commits (then is skipped) or rolls back (then runs).

    Records older than ``retention`` are deleted at most every ``purge_interval``
    seconds by whichever call comes next, or by :meth:`purge`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        schema: str = "public",
        table: str = "dotmac_inbox",
        retention: float | timedelta = DEFAULT_RETENTION,
        purge_interval: float = 300.0,
    ) -> None:
        self.pool = pool
        self.name = TableName(schema, table)
        self.retention = _seconds(retention)
        self.purge_interval = purge_interval
        self._next_purge = time.monotonic() + purge_interval
        self._purging: asyncio.Task[int] | None = None
        t = self.name.sql
        self._seen_sql = (
            f"SELECT EXISTS (SELECT 1 FROM {t} WHERE consumer_group = $1 AND event_id = $2 "  # noqa: S608 - quoted name
            "AND handled_at > now() - make_interval(secs => $3))"
        )
        self._mark_sql = (
            f"INSERT INTO {t} (consumer_group, event_id) VALUES ($1, $2) "  # noqa: S608 - quoted name
            "ON CONFLICT (consumer_group, event_id) DO UPDATE SET handled_at = now()"
        )
        # An expired record left behind by a late purge is taken over, not obeyed.
        self._claim_sql = (
            f"INSERT INTO {t} AS i (consumer_group, event_id) VALUES ($1, $2) "  # noqa: S608 - quoted name
            "ON CONFLICT (consumer_group, event_id) DO UPDATE SET handled_at = now() "
            "WHERE i.handled_at <= now() - make_interval(secs => $3) RETURNING true"
        )
        self._purge_sql = (
            f"DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} "  # noqa: S608 - quoted name
            "WHERE handled_at <= now() - make_interval(secs => $1) LIMIT $2))"
        )

    def __repr__(self) -> str:
        return f"<PostgresInbox table={self.name.text}>"

    async def install(self, conn: PgConnection | None = None) -> None:
        """Create the schema, table and index if they do not exist (idempotent)."""
        if conn is not None:
            await install(conn, self.name, inbox_ddl(self.name))
            return
        async with self.pool.acquire() as acquired:
            await install(acquired, self.name, inbox_ddl(self.name))

    async def seen(self, group: str, event_id: str) -> bool:
        self._maybe_purge()
        async with self.pool.acquire() as conn:
            return bool(await conn.fetchval(self._seen_sql, group, event_id, self.retention))

    async def mark(self, group: str, event_id: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(self._mark_sql, group, event_id)

    async def claim(self, conn: PgConnection, group: str, event_id: str) -> bool:
        """Insert the record on ``conn`` (inside the caller's transaction).

        ``True``: the event is new for ``group``; the caller handles it and the record
        commits with its transaction. ``False``: it was handled already; skip it.
        """
        return bool(await conn.fetchval(self._claim_sql, group, event_id, self.retention))

    def transactional(
        self,
        handler: Callable[[Event, PgConnection], Awaitable[R]],
        *,
        group: str,
    ) -> Callable[[Event], Awaitable[R | None]]:
        """Wrap ``handler(event, conn)`` for ``bus.subscribe``: exactly-once database effects.

        For each delivery: take a pooled connection, begin a transaction, insert the
        inbox record, call ``handler(event, conn)``, commit. If the record exists, the
        transaction ends without calling the handler and the delivery is acked. If the
        handler raises, everything rolls back (its writes and the record) and the
        exception goes to the runner, which retries or dead-letters as usual. Write
        through ``conn`` only: work on other connections is outside the transaction.
        """
        _check_group(group)

        async def handle_in_transaction(event: Event) -> R | None:
            self._maybe_purge()
            event_id = event.metadata.event_id
            async with self.pool.acquire() as conn, conn.transaction():
                if not await self.claim(conn, group, event_id):
                    log.debug("inbox: %s already handled by %s, skipped", event_id, group)
                    return None
                return await handler(event, conn)

        handle_in_transaction.__name__ = getattr(handler, "__name__", "handler")
        handle_in_transaction.__qualname__ = getattr(handler, "__qualname__", handle_in_transaction.__name__)
        handle_in_transaction.__doc__ = getattr(handler, "__doc__", None)
        return handle_in_transaction

    async def purge(self) -> int:
        """Delete records older than the retention window; returns how many."""
        total = 0
        async with self.pool.acquire() as conn:
            while True:
                status = await conn.execute(self._purge_sql, self.retention, 5000)
                deleted = int(status.split()[-1])
                total += deleted
                if deleted < 5000:
                    break
        if total:
            log.info("inbox %s purged %d records", self.name.text, total)
        return total

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now < self._next_purge or (self._purging is not None and not self._purging.done()):
            return
        self._next_purge = now + self.purge_interval
        # In a task of its own: a purge must not add its time to a handler's.
        self._purging = asyncio.get_running_loop().create_task(self._purge_logged())

    async def _purge_logged(self) -> int:
        try:
            return await self.purge()
        except Exception as exc:
            log.warning("inbox %s: purge failed: %s: %s", self.name.text, type(exc).__name__, exc)
            return 0

    async def close(self) -> None:
        """Wait for a purge in progress; the pool stays the caller's."""
        if self._purging is not None:
            await asyncio.gather(self._purging, return_exceptions=True)
