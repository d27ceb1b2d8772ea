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
    if type(fields) is list and type(entry_id) is bytes:
        message = _written_entry(topic, entry_id, fields)
        if message is not None:
            return message
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


def _written_entry(topic: str, entry_id: bytes, fields: list[Any]) -> Message | None:
    """The fast path of :func:`entry_message`, for an entry laid out as
    :func:`entry_fields` writes it, read back as bytes (headers, ``@key`` and its
    value if any, ``@data`` and the body last); ``None`` for any other layout.

    Every name and value but the body is decoded in one go: joined with NUL bytes,
    decoded, split again (UTF-8 never puts a NUL byte inside a character, so each
    part decodes as it would alone; a part holding a NUL byte itself takes the
    general path).
    """
    end = len(fields) - 2
    if end < 0 or end % 2 or fields[end] != _DATA_FIELD_B:
        return None
    value = fields[-1]
    has_key = end >= 2 and fields[end - 2] == _KEY_FIELD_B
    if has_key:
        end -= 2
    names = fields[0:end:2]
    if _DATA_FIELD_B in names or _KEY_FIELD_B in names or type(value) is not bytes:
        return None
    parts = fields[:end]
    if has_key:
        parts.append(fields[end + 1])
    if parts:
        try:
            decoded = b"\x00".join(parts).decode("utf-8", "surrogateescape").split("\x00")
        except TypeError:  # not all bytes
            return None
        if len(decoded) != len(parts):
            return None
    else:
        decoded = []
    key = decoded.pop() if has_key else None
    headers = dict(zip(decoded[0::2], decoded[1::2], strict=False))
    if len(headers) != end // 2:
        # A name given twice: kept once if the values agree, else marked ambiguous.
        headers = headers_from_pairs(zip(decoded[0::2], decoded[1::2], strict=False))
    position = entry_id.decode("utf-8", "surrogateescape")
    return Message(
        topic=topic,
        value=value,
        key=key,
        headers=headers,
        position=position,
        timestamp=_id_time(position),
    )


def entry_time(entry_id: Any) -> datetime | None:
    """The time in a stream entry id (``<milliseconds>-<sequence>``)."""
    return _id_time(text(entry_id))


# The time of the last entry id seen: entries of a batch mostly share their millisecond.
_last_time: tuple[str, datetime | None] = ("", None)


def _id_time(entry_id: str) -> datetime | None:
    global _last_time
    millis = entry_id.partition("-")[0]
    cached = _last_time
    if cached[0] == millis:
        return cached[1]
    try:
        when: datetime | None = datetime.fromtimestamp(int(millis) / 1000, timezone.utc)
    except (ValueError, OverflowError, OSError):
        when = None
    _last_time = (millis, when)
    return when


def streams(reply: Any) -> Iterable[tuple[Any, Any]]:
    """(stream, entries) pairs of an XREAD/XREADGROUP reply (RESP2 list or RESP3 map)."""
    if isinstance(reply, dict):
        return reply.items()
    return [(item[0], item[1]) for item in reply]


def entry_fields(message: Message) -> list[Any]:
    """The field/value list of ``XADD`` for ``message``.

    Names, header values and the key stay ``str``: the packer encodes them (in C),
    and text holding lone surrogates with ``surrogateescape``, so a dead letter of
    an entry whose header bytes were not UTF-8 carries those very bytes (see
    ``_connection._pack``).
    """
    fields: list[Any] = []
    for item in message.headers.items():
        fields += item
    if message.key is not None:
        fields += (KEY_FIELD, message.key)
    fields += (DATA_FIELD, message.value)
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
