"""Listing and replaying dead letters."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from attrs import frozen

from .dlq_headers import (
    DLQ_ATTEMPTS,
    DLQ_CONSUMER_GROUP,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_FAILED_AT,
    DLQ_HEADERS,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    REPLAY_COUNT,
    REPLAY_GROUP,
    RETRY_HEADERS,
    SCHEDULE_HEADERS,
)
from .errors import BusStateError, ValidationError
from .event import Event, validate_topic
from .transport import Message
from .wire import format_time, parse_time

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["LEDGER_READ_LIMIT", "DeadLetter", "DeadLetterHost", "DeadLetterQueue", "ledger_topic"]

log = logging.getLogger(__name__)

LEDGER_REPLAYED_AT = "x-replayed-at"
LEDGER_READ_LIMIT = 1_000_000
"""Replay-ledger entries read per replay; older ones beyond it are not consulted."""
_NOT_REPLAYED = frozenset((*DLQ_HEADERS, *RETRY_HEADERS, *SCHEDULE_HEADERS, REPLAY_GROUP))


class DeadLetterHost(Protocol):
    """What the dead-letter API needs from the bus it belongs to."""

    @property
    def transport(self) -> Transport: ...

    @property
    def started(self) -> bool: ...

    def decode(self, message: Message) -> Event: ...


@frozen
class DeadLetter:
    """One dead-lettered message and why it failed.

    ``event`` is ``None`` when the message cannot be decoded (that may be why it is here).
    """

    message: Message
    event: Event | None
    original_topic: str | None
    consumer_group: str | None
    error_type: str | None
    error_message: str | None
    reason: str | None
    attempts: int | None
    failed_at: datetime | None

    @property
    def event_id(self) -> str | None:
        return self.message.headers.get("ce_id")

    def as_record(self, *, detail: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (what ``dotmac-events dlq list`` prints).

        With ``detail`` also every header of the message (``headers``) and, when the
        message cannot be decoded, its bytes as text (``raw``, else ``None``).
        """
        record = {
            "event_id": self.event_id,
            "original_topic": self.original_topic,
            "consumer_group": self.consumer_group,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "reason": self.reason,
            "attempts": self.attempts,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "payload": self.event.payload if self.event is not None else None,
        }
        if detail:
            record["headers"] = dict(self.message.headers)
            record["raw"] = None if self.event is not None else self.message.value.decode("utf-8", "replace")
        return record


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _time(value: str | None) -> datetime | None:
    try:
        return parse_time(value) if value else None
    except ValueError:
        return None


class DeadLetterQueue:
    """``bus.dlq``: inspect a dead-letter topic and replay it to the original topics.

    Dead-letter topics are append-only: replaying republishes the events (same
    event id, payload bytes, key and headers, without the ``x-dlq-*`` headers) to
    the group that failed, leaves the dead letters in place and records the replay
    in a ledger topic, so a second replay does not send them again.
    """

    def __init__(self, bus: DeadLetterHost) -> None:
        self._bus = bus

    async def list(self, topic: str, *, limit: int = 100) -> list[DeadLetter]:
        """The retained dead letters of ``topic`` (a DLQ topic), oldest first."""
        validate_topic(topic)
        if not self._bus.started:
            raise BusStateError("the bus is not started; use 'async with bus' or await bus.start()")
        messages = await self._bus.transport.read(topic, limit=limit)
        return [self._parse(m) for m in messages]

    def _parse(self, message: Message) -> DeadLetter:
        headers = message.headers
        try:
            event: Event | None = self._bus.decode(message)
        except Exception:  # undecodable: that may be why it is a dead letter
            event = None
        group = headers.get(DLQ_CONSUMER_GROUP)
        return DeadLetter(
            message=message,
            event=event,
            original_topic=headers.get(DLQ_ORIGINAL_TOPIC),
            consumer_group=group or None,
            error_type=headers.get(DLQ_ERROR_TYPE),
            error_message=headers.get(DLQ_ERROR_MESSAGE),
            reason=headers.get(DLQ_REASON),
            attempts=_int(headers.get(DLQ_ATTEMPTS)),
            failed_at=_time(headers.get(DLQ_FAILED_AT)),
        )

    async def select(
        self,
        topic: str,
        *,
        event_ids: Iterable[str] | None = None,
        error_type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        group: str | None = None,
        limit: int = 1000,
        include_replayed: bool = False,
    ) -> builtins.list[DeadLetter]:
        """The dead letters of ``topic`` a :meth:`replay` with these filters would send.

        ``error_type`` matches ``x-dlq-error-type`` exactly; ``since``/``until``
        bound ``x-dlq-failed-at`` (inclusive, timezone-aware); ``group`` matches
        ``x-dlq-consumer-group`` (``""`` for broadcast). Dead letters already
        replayed (recorded in the replay ledger) are left out unless
        ``include_replayed``.
        """
        for name, bound in (("since", since), ("until", until)):
            if bound is not None and (not isinstance(bound, datetime) or bound.utcoffset() is None):
                raise ValidationError(f"{name} must be a timezone-aware datetime", field=name)
        wanted = set(event_ids) if event_ids is not None else None
        letters = await self.list(topic, limit=limit)
        replayed = {} if include_replayed else await self._replayed(topic)
        chosen: builtins.list[DeadLetter] = []
        seen: set[tuple[str | None, str]] = set()
        for letter in letters:
            if wanted is not None and letter.event_id not in wanted:
                continue
            if error_type is not None and letter.error_type != error_type:
                continue
            if since is not None and (letter.failed_at is None or letter.failed_at < since):
                continue
            if until is not None and (letter.failed_at is None or letter.failed_at > until):
                continue
            letter_group = letter.consumer_group or ""
            if group is not None and letter_group != group:
                continue
            identity = (letter.event_id, letter_group)
            if identity in seen:
                # The same event dead-lettered twice by one group (a dead-letter write
                # whose ack was lost): one replay covers both.
                continue
            last = replayed.get(identity)
            if last is not None and (letter.failed_at is None or letter.failed_at <= last):
                continue
            seen.add(identity)
            chosen.append(letter)
        return chosen

    async def _replayed(self, topic: str) -> dict[tuple[str | None, str], datetime]:
        """When each (event id, group) of ``topic`` was last replayed, from its ledger."""
        if not self._bus.transport.capabilities.readable:
            return {}
        entries = await self._bus.transport.read(ledger_topic(topic), limit=LEDGER_READ_LIMIT)
        done: dict[tuple[str | None, str], datetime] = {}
        for entry in entries:
            at = _time(entry.headers.get(LEDGER_REPLAYED_AT))
            if at is None:
                continue
            identity = (entry.headers.get("ce_id"), entry.headers.get(DLQ_CONSUMER_GROUP, ""))
            if identity not in done or done[identity] < at:
                done[identity] = at
        return done

    async def replay(
        self,
        topic: str,
        *,
        event_ids: Iterable[str] | None = None,
        limit: int = 1000,
        to_topic: str | None = None,
        error_type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        group: str | None = None,
        all_groups: bool = False,
        dry_run: bool = False,
        force: bool = False,
    ) -> int:
        """Republish dead letters of ``topic`` to their original topic (or ``to_topic``)
        and return how many were (or, with ``dry_run``, would be) sent.

        A replayed event keeps its event id, payload bytes, key and user headers; it
        loses the ``x-dlq-*``, retry and scheduling headers and gains
        ``x-replay-count`` (one more than it had) and ``x-replay-group``: only the
        group that failed handles it, every other group's runner acks it without a
        handler call. ``all_groups`` sends it to every group instead.

        Each replay is recorded in the ledger topic ``<topic>.replayed`` after it was
        sent, and a later replay skips what the ledger holds (``force`` replays it
        again); a dead letter written after its last replay (it failed again) is
        replayed. Filters are those of :meth:`select`.
        """
        if to_topic is not None:
            validate_topic(to_topic, field_name="to_topic")
        letters = await self.select(
            topic,
            event_ids=event_ids,
            error_type=error_type,
            since=since,
            until=until,
            group=group,
            limit=limit,
            include_replayed=force,
        )
        out: builtins.list[Message] = []
        ledger: builtins.list[Message] = []
        replayed_at = format_time(datetime.now(timezone.utc))
        for letter in letters:
            target = to_topic or letter.original_topic
            if target is None:
                raise ValidationError(
                    f"dead letter {letter.event_id} has no {DLQ_ORIGINAL_TOPIC} header; pass to_topic",
                    field="to_topic",
                )
            headers = {k: v for k, v in letter.message.headers.items() if k not in _NOT_REPLAYED}
            headers[REPLAY_COUNT] = str((_int(letter.message.headers.get(REPLAY_COUNT)) or 0) + 1)
            if not all_groups:
                headers[REPLAY_GROUP] = letter.consumer_group or ""
            out.append(
                Message(topic=target, value=letter.message.value, key=letter.message.key, headers=headers)
            )
            mark = {DLQ_CONSUMER_GROUP: letter.consumer_group or "", LEDGER_REPLAYED_AT: replayed_at}
            if letter.event_id is not None:
                mark["ce_id"] = letter.event_id
            ledger.append(Message(topic=ledger_topic(topic), value=b"", key=letter.message.key, headers=mark))
        if out and not dry_run:
            # Sent first, recorded second: a crash in between replays again (a
            # duplicate the handler deduplicates on the event id), never loses one.
            await self._bus.transport.publish(out)
            await self._bus.transport.publish(ledger)
            log.info("replayed %d dead letter(s) of %s", len(out), topic)
        return len(out)


def ledger_topic(topic: str) -> str:
    """The replay ledger of the dead-letter topic ``topic``."""
    return f"{topic}.replayed"
