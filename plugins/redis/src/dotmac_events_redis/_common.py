"""What every part of the Redis transport shares: the entry layout on the wire, how
a Redis failure becomes a :class:`~dotmac.events.errors.TransportError`, and the
backoff of reconnect and retry loops.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from dotmac.events import Capabilities, Message
from dotmac.events.wire import FieldsMessage, headers_from_pairs

from .errors import is_retriable, redis_message, transport_error

__all__ = [
    "CAPABILITIES",
    "DATA_FIELD",
    "KEY_FIELD",
    "RELEASED_IDLE_MS",
    "Backoff",
    "entry_fields",
    "entry_message",
    "redis_message",
    "retriable",
    "streams",
    "text",
    "transport_error",
    "wait",
]

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
    introspection=True,
)

# Stream entry fields besides the headers. '@' is not an HTTP token character, so no
# header name can take these.
KEY_FIELD = "@key"
DATA_FIELD = "@data"
_KEY_FIELD_B = KEY_FIELD.encode()
_DATA_FIELD_B = DATA_FIELD.encode()

# Idle time given to released entries: far above any sane min_idle_time, so the next
# reclaim by any live member takes them at once.
RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000


def text(value: Any) -> str:
    # Bytes that are not UTF-8 survive as lone surrogates, which the core's decode
    # refuses (the entry is dead-lettered), instead of turning into U+FFFD silently.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return str(value)


# -- failures ----------------------------------------------------------------------------
# How a Redis failure becomes one of the core's errors lives in ``errors``.
retriable = is_retriable


# -- entries -----------------------------------------------------------------------------
def entry_message(topic: str, entry_id: Any, fields: Any) -> Message:
    """A received stream entry as a :class:`Message` (fields as a flat list or a dict).

    A field that appears twice with different values (XADD accepts that) makes the
    headers ambiguous; the core's decode then dead-letters the entry. An entry
    without the body field is a :class:`~dotmac.events.wire.FieldsMessage`.
    """
    if isinstance(fields, list):
        flat = iter(fields)
        pairs: Iterable[tuple[Any, Any]] = zip(flat, flat, strict=True)
    else:
        pairs = fields.items()
    value: Any = None
    key: Any = None
    headers: list[tuple[str, str]] = []
    for name, raw in pairs:
        if name in (_DATA_FIELD_B, DATA_FIELD):
            value = raw
        elif name in (_KEY_FIELD_B, KEY_FIELD):
            key = raw
        else:
            headers.append((text(name), text(raw)))
    if value is None:
        # No body field (a plain XADD of fields): foreign intake reads the fields as the payload.
        return FieldsMessage(
            topic=topic,
            value=b"",
            key=None if key is None else text(key),
            headers=headers_from_pairs(headers),
            position=text(entry_id),
            timestamp=entry_time(entry_id),
        )
    return Message(
        topic=topic,
        value=value if isinstance(value, bytes) else text(value).encode("utf-8", "surrogateescape"),
        key=None if key is None else text(key),
        headers=headers_from_pairs(headers),
        position=text(entry_id),
        timestamp=entry_time(entry_id),
    )


def entry_time(entry_id: Any) -> datetime | None:
    """The time in a stream entry id (``<milliseconds>-<sequence>``)."""
    try:
        millis = int(text(entry_id).partition("-")[0])
        return datetime.fromtimestamp(millis / 1000, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def streams(reply: Any) -> Iterable[tuple[Any, Any]]:
    """(stream, entries) pairs of an XREAD/XREADGROUP reply (RESP2 list or RESP3 map)."""
    if isinstance(reply, dict):
        return reply.items()
    return [(item[0], item[1]) for item in reply]


def entry_fields(message: Message) -> list[Any]:
    """The field/value list of ``XADD`` for ``message``.

    Text is written back with ``surrogateescape``: a dead letter of an entry whose
    header bytes were not UTF-8 carries those very bytes.
    """
    fields: list[Any] = []
    for name, value in message.headers.items():
        fields.append(name.encode("utf-8", "surrogateescape"))
        fields.append(value.encode("utf-8", "surrogateescape"))
    if message.key is not None:
        fields.append(_KEY_FIELD_B)
        fields.append(message.key.encode("utf-8", "surrogateescape"))
    fields.append(_DATA_FIELD_B)
    fields.append(message.value)
    return fields


# -- waiting -----------------------------------------------------------------------------
class Backoff:
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


async def wait(event: asyncio.Event, timeout: float) -> bool:
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
