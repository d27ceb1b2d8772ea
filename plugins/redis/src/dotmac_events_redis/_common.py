"""What every part of the Redis transport shares: the entry layout on the wire, how
a Redis failure becomes a :class:`~dotmac.events.errors.TransportError`, and the
backoff of reconnect and retry loops.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Iterable
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dotmac.events import Capabilities, Message, TransportError, TransportUnavailableError

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
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# -- failures ----------------------------------------------------------------------------
def retriable(exc: BaseException) -> bool:
    """Whether repeating the operation later may succeed (a lost or busy server)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
        return False
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)):
        return not _tls_rejected(exc)
    if isinstance(exc, ResponseError):
        return str(exc).startswith(("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY ", "CLUSTERDOWN"))
    return False


def _tls_rejected(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(current) or "Hostname mismatch" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def redis_message(exc: BaseException) -> str:
    """The server's message, without the command text redis-py adds for pipelines
    (it would copy event contents into error messages and logs)."""
    message = str(exc)
    marker = "of pipeline caused error: "
    if marker in message:
        message = message.split(marker, 1)[1].strip("()',\"")
    return message


def transport_error(what: str, exc: BaseException) -> TransportError:
    """The core's error for a failed Redis operation, saying whether to retry."""
    can_retry = retriable(exc)
    detail = f"{type(exc).__name__}: {redis_message(exc)}"
    if _tls_rejected(exc):
        return TransportError(
            f"{what}: the server's TLS certificate was rejected ({detail})", retriable=False
        )
    if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
        return TransportError(f"{what}: Redis refused the credentials or command ({detail})", retriable=False)
    if can_retry:
        return TransportUnavailableError(f"{what}: Redis is unreachable ({detail})")
    return TransportError(f"{what}: {detail}", retriable=False)


# -- entries -----------------------------------------------------------------------------
def entry_message(topic: str, entry_id: Any, fields: Any) -> Message:
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
        headers = {text(name): text(raw) for name, raw in items.items()}
    return Message(
        topic=topic,
        value=value if isinstance(value, bytes) else text(value).encode(),
        key=None if key is None else text(key),
        headers=headers,
        position=text(entry_id),
    )


def streams(reply: Any) -> Iterable[tuple[Any, Any]]:
    """(stream, entries) pairs of an XREAD/XREADGROUP reply (RESP2 list or RESP3 map)."""
    if isinstance(reply, dict):
        return reply.items()
    return [(item[0], item[1]) for item in reply]


def entry_fields(message: Message) -> list[Any]:
    """The field/value list of ``XADD`` for ``message``."""
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
