"""Listing and replaying dead letters."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

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
)
from .errors import BusStateError, ValidationError
from .event import Event, validate_topic
from .transport import Message
from .wire import parse_time

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["DeadLetter", "DeadLetterHost", "DeadLetterQueue"]


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
    event id, payload bytes, key and headers, without the ``x-dlq-*`` headers) and
    leaves the dead letters in place. Handlers deduplicate on the event id.
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

    async def replay(
        self,
        topic: str,
        *,
        event_ids: Iterable[str] | None = None,
        limit: int = 1000,
        to_topic: str | None = None,
    ) -> int:
        """Republish dead letters of ``topic`` to their original topic (or ``to_topic``).

        ``event_ids`` limits the replay to those events. Returns how many were sent.
        """
        wanted = set(event_ids) if event_ids is not None else None
        if to_topic is not None:
            validate_topic(to_topic, field_name="to_topic")
        letters = await self.list(topic, limit=limit)
        out: list[Message] = []
        for letter in letters:
            if wanted is not None and letter.event_id not in wanted:
                continue
            target = to_topic or letter.original_topic
            if target is None:
                raise ValidationError(
                    f"dead letter {letter.event_id} has no {DLQ_ORIGINAL_TOPIC} header; pass to_topic",
                    field="to_topic",
                )
            headers = {k: v for k, v in letter.message.headers.items() if k not in DLQ_HEADERS}
            out.append(
                Message(topic=target, value=letter.message.value, key=letter.message.key, headers=headers)
            )
        if out:
            await self._bus.transport.publish(out)
        return len(out)
