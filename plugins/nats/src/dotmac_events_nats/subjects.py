"""How events map onto NATS: subjects, consumer names and headers.

- Topic ``orders.created`` is stored on subject ``<subject_prefix>.orders.created``.
  Dots are NATS's token separators, so a topic with an empty token (``a..b``, a
  leading or trailing dot) has no subject and is refused with
  :class:`~dotmac.events.errors.InvalidTopicError` before anything is sent.
- NATS has no message key: the event key travels in the ``ce_partitionkey`` header
  (the CloudEvents partitioning attribute; user headers may not start with ``ce_``)
  and is removed from the headers on receive.
- NATS clients strip leading and trailing whitespace from header values, so a value
  that would not survive the trip verbatim travels as an RFC 2047 encoded word
  (``=?utf-8?b?<base64>?=``) and is decoded on receive; every other value travels as
  itself. Headers the server or a NATS client adds (``Nats-*``) are not user headers:
  they are dropped on receive, and an event that carries one is refused on publish.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping

from dotmac.events.errors import HeaderValidationError, InvalidTopicError

__all__ = [
    "KEY_HEADER",
    "consumer_name",
    "decode_headers",
    "encode_headers",
    "parse_header_block",
    "subject_for",
]

KEY_HEADER = "ce_partitionkey"
_ENCODED_START = "=?utf-8?b?"
_ENCODED_END = "?="
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def subject_for(prefix: str, topic: str) -> str:
    """The subject that stores ``topic``; refuses topics NATS cannot carry."""
    if not topic or topic.startswith(".") or topic.endswith(".") or ".." in topic:
        raise InvalidTopicError(
            f"{topic!r} cannot be a NATS subject: dots separate subject tokens, so a topic "
            "may not start or end with '.' or contain '..'",
            field="topic",
        )
    return f"{prefix}.{topic}"


def consumer_name(group: str, topic: str) -> str:
    """The durable consumer of ``group`` on ``topic``: readable, valid, and distinct.

    Consumer names may not hold '.', so the readable part alone could make two pairs
    collide (``a.b``/``c`` and ``a``/``b.c``); the digest of the exact pair keeps them apart.
    """
    digest = hashlib.sha256(f"{group}\0{topic}".encode()).hexdigest()[:12]
    readable = _NAME_UNSAFE.sub("_", f"{group}__{topic}")[:96]
    return f"{readable}_{digest}"


def _needs_encoding(value: str) -> bool:
    return value != value.strip() or value.startswith(_ENCODED_START)


def encode_headers(headers: Mapping[str, str], key: str | None) -> dict[str, str]:
    """Message headers (and key) as NATS headers that come back verbatim."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name[:5].lower() == "nats-":
            # JetStream acts on these (Nats-Msg-Id deduplicates, Nats-Expected-* reject)
            # and they are dropped on receive: refuse them rather than change the event.
            raise HeaderValidationError(
                "header names starting with 'Nats-' are reserved by NATS", field=f"headers[{name!r}]"
            )
        if _needs_encoding(value):
            value = _ENCODED_START + base64.b64encode(value.encode()).decode("ascii") + _ENCODED_END
        out[name] = value
    if key is not None:
        out[KEY_HEADER] = (
            _ENCODED_START + base64.b64encode(key.encode()).decode("ascii") + _ENCODED_END
            if _needs_encoding(key)
            else key
        )
    return out


def _decode_value(value: str) -> str:
    if value.startswith(_ENCODED_START) and value.endswith(_ENCODED_END):
        body = value[len(_ENCODED_START) : -len(_ENCODED_END)]
        try:
            return base64.b64decode(body, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return value  # written by someone else: keep what was sent
    return value


def decode_headers(headers: Mapping[str, str] | None) -> tuple[str | None, dict[str, str]]:
    """(key, headers) of a received message, without the headers NATS added."""
    key: str | None = None
    out: dict[str, str] = {}
    if not headers:
        return None, out
    for name, value in headers.items():
        if name[:5].lower() == "nats-":
            continue
        if name == KEY_HEADER:
            key = _decode_value(value)
            continue
        out[name] = _decode_value(value)
    return key, out


def parse_header_block(raw: bytes) -> dict[str, str]:
    """Parse a ``NATS/1.0`` header block as the client library does for live messages."""
    out: dict[str, str] = {}
    lines = raw.split(b"\r\n")
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        text = name.strip().decode("ascii", "replace")
        if text and not any(c.isspace() for c in text):
            out[text] = value.strip().decode("utf-8", "replace")
    return out
