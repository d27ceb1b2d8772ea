"""The transactional outbox: events written in the caller's own database transaction.

``await outbox.publish(conn, event)`` encodes the event to its wire form (the same
bytes and ``ce_*`` headers a bus would send) and inserts it into the outbox table on
``conn``, inside the transaction the caller has open. If that transaction commits, the
relay (:class:`~dotmac_events_outbox.relay.OutboxRelay`) sends the row; if it rolls
back, the row never existed and nothing is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from dotmac.events.bus import DEFAULT_MAX_MESSAGE_BYTES
from dotmac.events.codec import Codec
from dotmac.events.errors import ConfigurationError, EventBusError, MessageTooLargeError, ValidationError
from dotmac.events.event import Event
from dotmac.events.plugins import get_registry
from dotmac.events.transport import Message
from dotmac.events.wire import envelope_headers

from ._sql import TableName, outbox_ddl

if TYPE_CHECKING:
    from typing import TypeAlias

    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    PgConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
    """A connection of your own or one borrowed from an ``asyncpg`` pool."""

__all__ = ["DEFAULT_TABLE", "Outbox", "TransactionRequiredError"]

log = logging.getLogger(__name__)

DEFAULT_TABLE = "dotmac_outbox"

Encoder = Callable[[Event], Message]
"""Turns an event into its wire :class:`Message` (``EventBus.encode`` is one)."""


class TransactionRequiredError(EventBusError):
    """``Outbox.publish`` was called on a connection with no open transaction.

    Outside a transaction the row would commit on its own, whatever happens to the
    caller's other writes, which is exactly what an outbox exists to prevent.
    """


class Outbox:
    """Writes events into an outbox table, in the caller's transaction.

    ``schema`` and ``table`` name the table (created by :meth:`install`). Events are
    encoded with ``codec`` (a registered codec's name or a :class:`Codec`), stamped
    with ``source`` where they have none, and refused above ``max_message_bytes``,
    as a bus would. Pass ``encoder=bus.encode`` to use a bus's own codecs and payload
    validators instead. ``notify`` sends a ``NOTIFY`` (delivered at commit, dropped on
    rollback) so that a listening relay wakes at once instead of at its next poll.
    """

    def __init__(
        self,
        *,
        schema: str = "public",
        table: str = DEFAULT_TABLE,
        codec: str | Codec = "json",
        codec_options: Mapping[str, Any] | None = None,
        source: str = "dotmac-events",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        encoder: Encoder | None = None,
        notify: bool = True,
    ) -> None:
        self.name = TableName(schema, table)
        self.source = source
        self.max_message_bytes = max_message_bytes
        self.notify = notify
        if encoder is None:
            self._codec = _make_codec(codec, codec_options)
            self._encode: Encoder = self._encode_with_codec
        else:
            self._encode = encoder
        t = self.name.sql
        self._insert_sql = (
            f"INSERT INTO {t} (event_id, topic, key, headers, value) "  # noqa: S608 - quoted name
            "SELECT e, t, k, h::jsonb, v FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
            "$5::bytea[]) AS r(e, t, k, h, v)"
        )
        # One round trip: a data-modifying CTE runs whatever the outer query reads.
        self._insert_notify_sql = f"WITH ins AS ({self._insert_sql} RETURNING 1) SELECT pg_notify($6, '')"

    @property
    def channel(self) -> str:
        """The ``LISTEN`` channel the relay waits on."""
        return channel_for(self.name)

    def __repr__(self) -> str:
        return f"<Outbox table={self.name.text}>"

    async def install(self, conn: PgConnection) -> None:
        """Create the schema, table and indexes if they do not exist (idempotent)."""
        await install(conn, self.name, outbox_ddl(self.name))

    def encode(self, event: Event) -> Message:
        """Validate and encode ``event`` into the row's wire form (no I/O)."""
        if not isinstance(event, Event):
            raise ValidationError(f"expected an Event, got {type(event).__name__}", field="event")
        return self._encode(event)

    def _encode_with_codec(self, event: Event) -> Message:
        body = self._codec.encode(event)
        if len(body) > self.max_message_bytes:
            raise MessageTooLargeError(
                f"encoded payload is {len(body)} bytes, the maximum is {self.max_message_bytes}",
                field="payload",
            )
        headers = envelope_headers(event, content_type=self._codec.content_type, source=self.source)
        return Message(topic=event.topic, value=body, key=event.key, headers=headers)

    async def publish(self, conn: PgConnection, event: Event) -> None:
        """Write ``event`` in the transaction open on ``conn``.

        Raises a :class:`~dotmac.events.errors.ValidationError` (or codec error) for a
        bad event and :class:`TransactionRequiredError` without an open transaction,
        in both cases before anything is written.
        """
        await self.publish_many(conn, (event,))

    async def publish_many(self, conn: PgConnection, events: Iterable[Event]) -> None:
        """Write several events in one statement; every one is encoded before any is written."""
        batch = list(events)
        messages = []
        for i, event in enumerate(batch):
            if not isinstance(event, Event):
                raise ValidationError(
                    f"expected an Event, got {type(event).__name__}",
                    field=f"events[{i}]" if len(batch) > 1 else "event",
                )
            messages.append(self._encode(event))
        if not messages:
            return
        if not conn.is_in_transaction():
            raise TransactionRequiredError(
                "outbox.publish() needs an open transaction on the connection: "
                "use it inside 'async with conn.transaction():'"
            )
        args: list[Any] = [
            [m.headers["ce_id"] for m in messages],
            [m.topic for m in messages],
            [m.key for m in messages],
            [orjson.dumps(dict(m.headers)).decode() for m in messages],
            [m.value for m in messages],
        ]
        if self.notify:
            await conn.execute(self._insert_notify_sql, *args, self.channel)
        else:
            await conn.execute(self._insert_sql, *args)


def channel_for(name: TableName) -> str:
    # A notification channel is an identifier (at most 63 bytes); a clash between two
    # long names only costs the other relay a wasted wake-up.
    return name.text[:63]


async def install(conn: PgConnection, name: TableName, statements: list[str]) -> None:
    # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogue, so
    # installers of one table take turns.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"dotmac-install:{name.text}")
        for statement in statements:
            await conn.execute(statement)
    log.info("installed %s", name.text)


def _make_codec(codec: str | Codec, options: Mapping[str, Any] | None) -> Codec:
    if isinstance(codec, Codec):
        return codec
    spec = get_registry().codec(codec)
    try:
        return spec.factory(**dict(options or {}))
    except TypeError as exc:
        raise ConfigurationError(f"bad options for the {codec!r} codec: {exc}") from exc
