"""The wire format: the :class:`Message` and its CloudEvents 1.0 binary-mode envelope.

This module owns what travels: the encoded message, the header names and the rules
that turn a received message back into an :class:`~dotmac.events.event.Event`. The
body is the codec's bytes; envelope attributes travel as headers::

    ce_specversion  "1.0"
    ce_id           metadata.event_id
    ce_type         metadata.event_type (defaults to the topic)
    ce_source       metadata.source (defaults to the bus's source)
    ce_time         metadata.occurred_at, RFC 3339 UTC
    content-type    the codec's content type
    ce_tenantid, ce_correlationid, ce_causationid, ce_replyto, ce_schemaversion,
    ce_subject, ce_dataschema
                    when set
    ce_<name>       each entry of metadata.extensions

User headers travel as themselves. The event key is the message key. The transport
contract (``transport.py``) builds on this module, never the other way round.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from attrs import frozen

from .codec import JsonCodec
from .errors import DecodeError, SchemaValidationError, ValidationError
from .event import _NOTHING as _DEFAULT
from .event import (
    MAX_HEADER_COUNT,
    MAX_HEADER_NAME_LENGTH,
    MAX_HEADER_VALUE_LENGTH,
    MAX_ID_LENGTH,
    Event,
    EventMetadata,
    _frozen_headers,
    _is_tenant,
    _known_tenants,
    _received_event,
    validate_extension_name,
)

if TYPE_CHECKING:
    from .codec import Codec

_json_loads = orjson.loads

__all__ = [
    "CE_ATTRIBUTES",
    "SPEC_VERSION",
    "FieldsMessage",
    "Message",
    "WireHeaders",
    "decode_foreign",
    "decode_message",
    "foreign_event_id",
    "foreign_onward",
    "format_time",
    "headers_from_pairs",
    "parse_time",
    "split_headers",
]


class _MessageSlots:
    # The fields live here, so that a draft of the same layout can be filled with plain
    # stores and then made the frozen class (as Event is; see event.py).
    __slots__ = ("headers", "key", "position", "timestamp", "topic", "value")


class _MessageDraft(_MessageSlots):
    __slots__ = ("__weakref__",)  # as the frozen class has it: the layouts must match
    if TYPE_CHECKING:

        def __setattr__(self, name: str, value: Any) -> None: ...


_set = object.__setattr__


@frozen(init=False)
class Message(_MessageSlots):
    """An encoded event as it travels: topic, optional key, string headers, body bytes.

    ``headers`` hold the CloudEvents ``ce_*`` attributes, ``content-type`` and the
    user headers. ``position`` is the transport's own id for a received message
    (stream id, ``partition:offset``; on RabbitMQ, for a message without an envelope,
    its ``message_id`` or a hash of it) and is ``None`` when publishing. ``timestamp``
    is the broker's time of a received record (Kafka's record timestamp, the time in
    a Redis stream entry id) where the transport has one; foreign intake uses it.

    A transport that receives header names or values as bytes decodes them with
    ``errors="surrogateescape"`` (so invalid UTF-8 reaches the core as lone
    surrogates, which the decode refuses), and builds ``headers`` with
    :func:`headers_from_pairs` when the broker can repeat a header name.
    """

    # No defaults here: the hand-written __init__ below is the one source of them.
    topic: str
    value: bytes
    key: str | None
    headers: Mapping[str, str]
    position: str | None
    timestamp: datetime | None

    fields_only: ClassVar[bool] = False
    """True for a :class:`FieldsMessage`: a record with named fields and no body."""

    def __init__(
        self,
        topic: str,
        value: bytes,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        position: str | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        if headers is None:
            headers = {}
        cls = self.__class__
        if cls is Message or cls is FieldsMessage:
            # Filled as a draft: a plain store per field instead of object.__setattr__.
            _set(self, "__class__", _MessageDraft)
            draft: _MessageDraft = self  # type: ignore[assignment]
            draft.topic = topic
            draft.value = value
            draft.key = key
            draft.headers = headers
            draft.position = position
            draft.timestamp = timestamp
            draft.__class__ = cls  # type: ignore[assignment]
        else:  # a subclass may add slots of its own
            _set(self, "topic", topic)
            _set(self, "value", value)
            _set(self, "key", key)
            _set(self, "headers", headers)
            _set(self, "position", position)
            _set(self, "timestamp", timestamp)


@frozen(init=False)
class FieldsMessage(Message):
    """A received record that has named fields and no body of its own (a Redis stream
    entry without the ``@data`` field, written by a plain client).

    ``headers`` hold its fields and ``value`` is empty. With the default intake it is
    read like any message; foreign intake reads its fields as the payload, a ``dict``
    of text (see :func:`decode_foreign`).
    """

    fields_only: ClassVar[bool] = True


class WireHeaders(dict[str, str]):
    """Received headers that remember the names a broker repeated with different values.

    Built by :func:`headers_from_pairs`; the decode refuses a message whose
    ``conflicts`` is not empty instead of letting the last value win.
    """

    __slots__ = ("conflicts",)

    def __init__(self) -> None:
        super().__init__()
        self.conflicts: tuple[str, ...] = ()


def headers_from_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers mapping of a received message, from its (name, value) pairs in order.

    A name repeated with the same value is kept once. A name repeated with a
    different value is recorded, and :func:`decode_message` dead-letters the message
    as ambiguous: a mapping can hold one value per name, and picking one would
    change the event silently.
    """
    headers: dict[str, str] = {}
    conflicts: list[str] | None = None
    for name, value in pairs:
        previous = headers.setdefault(name, value)
        if previous is not value and previous != value:
            if conflicts is None:
                conflicts = []
            conflicts.append(name)
    if conflicts is None:
        return headers
    # Only the rare ambiguous message pays for the subclass.
    marked = WireHeaders()
    marked.update(headers)
    marked.conflicts = tuple(dict.fromkeys(conflicts))
    return marked


SPEC_VERSION = "1.0"

# metadata field -> header name, for the optional attributes.
CE_ATTRIBUTES: dict[str, str] = {
    "correlation_id": "ce_correlationid",
    "causation_id": "ce_causationid",
    "reply_to": "ce_replyto",
    "schema_version": "ce_schemaversion",
    "subject": "ce_subject",
    "data_schema": "ce_dataschema",
}

# Envelope names that map to a field; any other ce_* name is an extension attribute.
_KNOWN_ENVELOPE = frozenset(
    {
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_time",
        "content-type",
        "ce_tenantid",
        *CE_ATTRIBUTES.values(),
    }
)


# (second, minute, hour, day, month, year) -> "YYYY-MM-DDTHH:MM:SS." of the last time
# written. Events published together share their second, and isoformat (its offset
# formatting above all) costs twice the rest of format_time; one tuple, swapped whole,
# so threads never pair one second's key with another's text.
_last_second: tuple[tuple[int, int, int, int, int, int], str] = ((-1, -1, -1, -1, -1, -1), "")


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds: ``2026-01-02T03:04:05.000006Z``."""
    global _last_second
    if value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    second = (value.second, value.minute, value.hour, value.day, value.month, value.year)
    last = _last_second
    if last[0] != second:
        # isoformat pads the year to 4 digits (strftime's %Y does not on glibc, which
        # made times before year 1000 unreadable).
        last = _last_second = (second, value.isoformat(timespec="seconds")[:19] + ".")
    return f"{last[1]}{value.microsecond:06d}Z"


# Python 3.11's fromisoformat reads a trailing "Z" itself and gives timezone.utc.
_READS_Z = sys.version_info >= (3, 11)
_fromisoformat = datetime.fromisoformat
_UTC = timezone.utc


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 time into an aware UTC datetime.

    Raises :class:`ValueError` for text that is not a time, and also for a time that
    has no UTC equivalent in :class:`datetime`'s range (year 1 with a positive offset,
    year 9999 with a negative one), which the standard library reports as
    :class:`OverflowError`.
    """
    if _READS_Z and len(value) == 27 and value[26] == "Z":
        # What format_time writes (every ce_time of this package): read as it is,
        # without the copy that swaps "Z" for "+00:00". Anything it does not give
        # as UTC, or refuses, goes the general way below, which decides.
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is _UTC:
                return parsed
    return _parse_time(value)


def _parse_time(value: str) -> datetime:
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the range of UTC times") from None


def envelope_headers(event: Event, *, content_type: str, source: str) -> dict[str, str]:
    """User headers followed by the ``ce_*`` attributes of ``event``."""
    meta = event.metadata
    headers = {
        **event.headers,
        "ce_specversion": SPEC_VERSION,
        "ce_id": meta.event_id,
        "ce_type": meta.event_type or event.topic,
        "ce_source": meta.source or source,
        "ce_time": format_time(meta.occurred_at),
        "content-type": content_type,
    }
    if event.tenant_id is not None:
        headers["ce_tenantid"] = event.tenant_id
    if meta.correlation_id is not None:
        headers["ce_correlationid"] = meta.correlation_id
    if meta.causation_id is not None:
        headers["ce_causationid"] = meta.causation_id
    if meta.reply_to is not None:
        headers["ce_replyto"] = meta.reply_to
    if meta.schema_version is not None:
        headers["ce_schemaversion"] = meta.schema_version
    if meta.subject is not None:
        headers["ce_subject"] = meta.subject
    if meta.data_schema is not None:
        headers["ce_dataschema"] = meta.data_schema
    if meta.extensions:
        for name, value in meta.extensions.items():
            headers["ce_" + name] = value
    return headers


# header name -> its lowered name when it is an envelope attribute, else None. Names
# repeat on every message, so classifying each once takes the str work off the hot path.
# Only names that passed the checks of _header_kind are remembered.
_header_kinds: dict[str, str | None] = {}
_CACHE_LIMIT = 4096
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _bad_text(value: object) -> str | None:
    """Why ``value`` cannot be a received header name or value, or None when it can."""
    if value.__class__ is not str and not isinstance(value, str):
        return f"is a {type(value).__name__}, not text"
    # isascii() is O(1) on CPython, so the common case costs one call.
    if not value.isascii() and _SURROGATE.search(value):
        return "is not valid UTF-8"
    return None


def _header_kind(name: str) -> str | None:
    problem = _bad_text(name)
    if problem is not None:
        raise DecodeError(f"a header name {problem}: {name!r}")
    if not _TOKEN.fullmatch(name):
        # Checked here for envelope names too: a ce_* attribute becomes an extension,
        # whose name must also be a header name when it is written again.
        raise DecodeError(f"header name {name!r} is not a token")
    lowered = name.lower()
    kind = lowered if lowered.startswith("ce_") or lowered == "content-type" else None
    if len(_header_kinds) >= _CACHE_LIMIT:
        _header_kinds.clear()
    _header_kinds[name] = kind
    return kind


def split_headers(headers: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split received headers into (envelope attributes by lowered name, user headers).

    Raises :class:`DecodeError` for a name or value that is not valid UTF-8 (a lone
    surrogate, see :class:`Message`), for a name the transport saw twice with
    different values, and for one envelope attribute spelled twice (``ce_tenantid``
    and ``CE_TENANTID``) with different values.
    """
    conflicts = getattr(headers, "conflicts", None)
    if conflicts:
        names = ", ".join(map(repr, conflicts))
        raise DecodeError(f"ambiguous envelope: header {names} repeated with different values")
    envelope: dict[str, str] = {}
    user: dict[str, str] = {}
    kinds = _header_kinds
    for name, value in headers.items():
        kind = kinds[name] if name.__class__ is str and name in kinds else _header_kind(name)
        if value.__class__ is not str or not value.isascii():
            problem = _bad_text(value)
            if problem is not None:
                raise DecodeError(f"the value of header {name!r} {problem}")
        if kind is None:
            user[name] = value
        elif kind in envelope and envelope[kind] != value:
            raise DecodeError(f"ambiguous envelope: {kind!r} appears twice with different values")
        else:
            envelope[kind] = value
    return envelope, user


# The envelope names every message of a publisher repeats, and the only ones the quick
# decode (_quick) reads; a message with any other envelope header takes the full one.
_QUICK_ENVELOPE = frozenset(
    {"ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type", "ce_tenantid"}
)
# The header names of a message, in order -> its user header names, for name sequences
# that passed every check of split_headers and of Event's headers (HTTP tokens of at
# most MAX_HEADER_NAME_LENGTH characters, each envelope name spelled in lower case and
# once, no envelope name outside _QUICK_ENVELOPE, at most MAX_HEADER_COUNT user
# headers). Publishers repeat one sequence per kind of event, so the per-name work of
# split_headers runs once per sequence instead of once per message.
_plans: dict[tuple[str, ...], tuple[str, ...]] = {}
_STR_ONLY = frozenset({str})
_NO_PLAN: tuple[str, ...] = ("",)


def _plan(names: tuple[str, ...]) -> tuple[str, ...]:
    """The user header names among ``names``, or ``_NO_PLAN`` for the full decode."""
    user: list[str] = []
    for name in names:
        if name.__class__ is not str:
            return _NO_PLAN
        try:
            kind = _header_kinds[name] if name in _header_kinds else _header_kind(name)
        except DecodeError:
            return _NO_PLAN
        if kind is None:
            if len(name) > MAX_HEADER_NAME_LENGTH:
                return _NO_PLAN
            user.append(name)
        elif kind != name or kind not in _QUICK_ENVELOPE:
            return _NO_PLAN
    if len(user) > MAX_HEADER_COUNT:
        return _NO_PLAN
    plan = tuple(user)
    if len(_plans) >= _CACHE_LIMIT:
        _plans.clear()
    _plans[names] = plan
    return plan


def _quick(message: Message, payload: Any) -> Event | None:
    """The event of a received message whose envelope is plain, or None for the full path.

    Plain: header names of a known good sequence (see ``_plans``), every header value
    a ``str`` of ASCII without CR, LF or NUL, all of them together no longer than one
    header value may be, a tenant this process has validated before. Such a
    message passes every check of split_headers and of the envelope's fields but the
    ones made here; anything else (and every error) goes the full way, which says
    precisely what is wrong.
    """
    headers = message.headers
    if headers.__class__ is not dict:
        return None
    names = tuple(headers)
    user_names = _plans.get(names)
    if user_names is None:
        user_names = _plan(names)
    if user_names is _NO_PLAN:
        return None
    values = headers.values()
    if not _STR_ONLY.issuperset(map(type, values)):
        return None
    joined = "".join(values)
    if (
        len(joined) > MAX_HEADER_VALUE_LENGTH
        or not joined.isascii()
        or "\n" in joined
        or "\r" in joined
        or "\x00" in joined
    ):
        return None
    get = headers.get
    version = get("ce_specversion")
    if version is not None and version != SPEC_VERSION:
        return None
    tenant = get("ce_tenantid")
    if tenant is not None and tenant not in _known_tenants:
        return None
    time_text = get("ce_time")
    if time_text is None:
        occurred_at = None
    else:
        try:
            occurred_at = parse_time(time_text)
        except ValueError:
            return None
    try:
        return _received_event(
            message.topic,
            payload,
            message.key,
            headers,
            user_names,
            tenant,
            get("ce_id"),
            get("ce_type"),
            get("ce_source"),
            occurred_at,
            get("content-type"),
        )
    except ValidationError:
        return None


def build_event(message: Message, payload: dict[str, Any]) -> Event:
    """Rebuild the :class:`Event` from a received message and its decoded payload.

    Raises :class:`DecodeError` when the envelope is missing, malformed or ambiguous.
    """
    envelope, user = split_headers(message.headers)
    return _build(message, envelope, user, payload)


def _build(message: Message, envelope: dict[str, str], user: dict[str, str], payload: Any) -> Event:
    topic = message.topic
    get = envelope.get
    event_id = get("ce_id")
    if event_id is None:
        raise DecodeError(f"message on {topic!r} has no ce_id header")
    version = get("ce_specversion")
    # Absent is read as 1.0: every publisher of this package writes it, and a plain
    # producer that leaves it out still means this envelope. Any other version may
    # give these headers another meaning, so it is not guessed at.
    if version is not None and version != SPEC_VERSION:
        raise DecodeError(
            f"message on {topic!r} has ce_specversion {version!r}; only {SPEC_VERSION!r} is read"
        )
    extensions: dict[str, str] | None = None
    if not envelope.keys() <= _KNOWN_ENVELOPE:
        extensions = _extensions(topic, envelope)
    tenant = get("ce_tenantid")
    if tenant is not None and tenant not in _known_tenants and not _is_tenant(tenant):
        # A tenant id from another producer that cannot key this bus's namespaces
        # (acme.eu: a dot could address another tenant's topics) is kept, unused, as
        # the extension it is in CloudEvents terms, and written again as ce_tenantid.
        if extensions is None:
            extensions = {}
        extensions["tenantid"] = tenant
        tenant = None
    time_text = get("ce_time")
    try:
        occurred_at = _DEFAULT if time_text is None else parse_time(time_text)
    except ValueError as exc:
        raise DecodeError(f"message on {topic!r} has a malformed ce_time: {exc}") from exc
    try:
        return Event(
            topic,
            payload,
            message.key,
            _frozen_headers(user),
            tenant,
            EventMetadata(
                event_id,
                get("ce_type"),
                get("ce_source"),
                occurred_at,
                get("ce_correlationid"),
                get("ce_causationid"),
                get("ce_replyto"),
                get("content-type"),
                get("ce_schemaversion"),
                get("ce_subject"),
                get("ce_dataschema"),
                extensions,
            ),
        )
    except ValidationError as exc:
        raise DecodeError(f"message on {topic!r} has an invalid envelope: {exc}") from exc


def _extensions(topic: str, envelope: dict[str, str]) -> dict[str, str]:
    """The CloudEvents extension attributes among the envelope headers, by name."""
    extensions = {}
    for name, value in envelope.items():
        if name in _KNOWN_ENVELOPE:
            continue
        # Not ValidationError's wording alone: say which header it was.
        ext = name[3:]
        try:
            validate_extension_name(ext)
        except ValidationError as exc:
            raise DecodeError(
                f"message on {topic!r} has header {name!r}, which is not a CloudEvents attribute: {exc}"
            ) from exc
        extensions[ext] = value
    return extensions


def content_type_of(headers: Mapping[str, str]) -> str | None:
    """The media type of ``content-type`` (lowered, parameters dropped), or None."""
    value = headers.get("content-type")
    if value is None:
        return None
    return value.split(";", 1)[0].strip().lower()


def _structured(
    message: Message,
    envelope: dict[str, str],
    content_type: str,
    decoder_for: Callable[[str | None], Codec | None],
) -> Any:
    from .structured import BATCH_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE, read_structured

    topic = message.topic
    if content_type == BATCH_CONTENT_TYPE:
        raise DecodeError(
            f"message on {topic!r} is a CloudEvents batch ({BATCH_CONTENT_TYPE}); batched mode is "
            "not read: publish one event per message"
        )
    if content_type != STRUCTURED_CONTENT_TYPE:
        raise DecodeError(f"no installed codec reads content type {content_type!r}")
    try:
        return read_structured(topic, bytes(message.value), envelope, decoder_for, message.headers)
    except (DecodeError, ValidationError):
        raise
    except Exception as exc:
        raise DecodeError(
            f"a structured event on {topic!r} could not be read: {type(exc).__name__}: {exc}"
        ) from exc


_SEPARATOR = ":"


def foreign_event_id(topic: str, position: str) -> str:
    """The event id of a record without an envelope: ``<topic>:<position>``.

    The same record always gets the same id (redeliveries and other groups alike), so
    handlers deduplicate on it; ids longer than an id may be become a UUID 5 of it.
    """
    text = f"{topic}{_SEPARATOR}{position}"
    if len(text) <= MAX_ID_LENGTH:
        return text
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "dotmac-events:" + text))


def decode_foreign(
    message: Message,
    decoder_for: Callable[[str | None], Codec | None],
    codec_for_topic: Callable[[str], Codec],
    validate: Callable[[Any], object] | None = None,
) -> Event:
    """Turn a received record that may have no envelope into an :class:`Event`.

    A record with a ``ce_id`` header or a structured body is read by
    :func:`decode_message`. Any other record becomes an event whose id is
    :func:`foreign_event_id` of its position, whose time is the record's timestamp
    (the time of decoding when the transport has none), whose payload is decoded by
    the codec of its ``content-type`` header or else ``codec_for_topic(topic)``, and
    whose key and headers are the record's (``content-type`` goes to
    ``metadata.content_type``). A :class:`FieldsMessage` has no body: its payload is
    a ``dict`` of its fields (every one, as text), its headers are empty and its
    ``metadata.content_type`` is ``None``. Raises what :func:`decode_message` raises.
    """
    headers = message.headers
    envelope, user = split_headers(headers)
    content_type = envelope.get("content-type")
    media = None if content_type is None else content_type.split(";", 1)[0].strip().lower()
    if "ce_id" in envelope or (media is not None and media.startswith("application/cloudevents")):
        return decode_message(message, decoder_for, validate)
    topic = message.topic
    position = message.position
    if position is None:
        raise DecodeError(
            f"a record on {topic!r} has no envelope and its transport gives no position to derive an id from"
        )
    if envelope.keys() - {"content-type"}:
        names = ", ".join(sorted(envelope.keys() - {"content-type"}))
        raise DecodeError(f"a record on {topic!r} has envelope attributes ({names}) but no ce_id")
    if message.fields_only:
        return _fields_event(message, position, validate)
    codec = decoder_for(media) if media is not None else codec_for_topic(topic)
    if codec is None:
        raise DecodeError(f"no installed codec reads content type {media!r}")
    value = message.value
    try:
        payload = codec.decode(bytes(value), topic=topic, headers=headers)
    except (DecodeError, ValidationError):
        raise
    except Exception as exc:
        raise DecodeError(
            f"the {codec.name!r} codec could not read a record on {topic!r}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        event = Event(
            topic,
            payload,
            message.key,
            _frozen_headers(user),
            None,
            EventMetadata(
                foreign_event_id(topic, position),
                occurred_at=message.timestamp or _DEFAULT,
                content_type=content_type or codec.content_type,
            ),
        )
    except ValidationError as exc:
        raise DecodeError(f"a record on {topic!r} cannot be an event: {exc}") from exc
    _validate(event, validate)
    return event


def _fields_event(message: Message, position: str, validate: Callable[[Any], object] | None) -> Event:
    # split_headers has checked every name and value (UTF-8, tokens, no conflicts).
    topic = message.topic
    try:
        event = Event(
            topic,
            dict(message.headers),
            message.key,
            None,
            None,
            EventMetadata(foreign_event_id(topic, position), occurred_at=message.timestamp or _DEFAULT),
        )
    except ValidationError as exc:
        raise DecodeError(f"a record on {topic!r} cannot be an event: {exc}") from exc
    _validate(event, validate)
    return event


def _has_envelope(headers: Mapping[str, str]) -> bool:
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "ce_id":
            return True
        if lowered == "content-type" and value.strip().lower().startswith("application/cloudevents"):
            return True
    return False


def foreign_onward(message: Message, event: Event) -> tuple[bytes, dict[str, str]]:
    """The body and headers that carry ``event``, read from ``message``, to a retry or
    dead-letter topic.

    A message with its own envelope goes on as it came. One that foreign intake read
    gains the envelope intake gave it (``ce_specversion``, ``ce_id``, ``ce_time`` and
    its ``content-type``), so a retry or a replay is the same event with the same id,
    not a new record with an id of its own. A :class:`FieldsMessage` goes on as the
    JSON of its payload, which holds its fields.
    """
    headers = dict(message.headers)
    if _has_envelope(headers):
        return message.value, headers
    meta = event.metadata
    content_type = meta.content_type
    body = message.value
    if message.fields_only:
        from .codec import JsonCodec

        codec = JsonCodec()
        body, headers, content_type = codec.encode(event), {}, codec.content_type
    headers["ce_specversion"] = SPEC_VERSION
    headers["ce_id"] = meta.event_id
    headers["ce_time"] = format_time(meta.occurred_at)
    if content_type is not None:
        headers["content-type"] = content_type
    return body, headers


def decode_message(
    message: Message,
    decoder_for: Callable[[str | None], Codec | None],
    validate: Callable[[dict[str, Any]], object] | None = None,
) -> Event:
    """Turn a received :class:`Message` into an :class:`Event`.

    ``decoder_for(content_type)`` returns the codec for a media type (``None`` asks
    for the default codec, used when the message has no ``content-type``), or
    ``None`` when no codec reads it. ``validate`` checks the decoded payload.

    Raises only :class:`~dotmac.events.errors.EventBusError` subclasses:
    :class:`DecodeError` when the message cannot be read or its envelope is
    ambiguous, and a :class:`ValidationError` that is not a :class:`DecodeError`
    (:class:`SchemaValidationError` for anything ``validate`` raises) when the
    payload was read but rejected. A codec or validator from a plugin may raise
    anything; it is wrapped here, so a consumer always knows what to do with the
    message.
    """
    topic = message.topic
    value = message.value
    if value.__class__ is not bytes and not isinstance(value, (bytes, bytearray, memoryview)):
        raise DecodeError(f"message on {topic!r} has a {type(value).__name__} body, not bytes")
    headers = message.headers
    content_type = headers.get("content-type")
    if content_type == "application/json" and headers.__class__ is dict:
        # What this package's JSON codec writes: the quick path, when the envelope is
        # plain (see _quick); the body is read first, the envelope checked after.
        try:
            codec = decoder_for(content_type)
        except Exception:
            split_headers(headers)  # as on the full path, an envelope error comes first
            raise
        if codec is not None:
            try:
                if codec.__class__ is JsonCodec and value:
                    # The JSON codec's decode without its call: orjson directly.
                    try:
                        payload = _json_loads(value)
                    except ValueError:
                        # Not JSON: the codec says so in its own words.
                        payload = codec.decode(value, topic=topic, headers=headers)
                else:
                    payload = codec.decode(value, topic=topic, headers=headers)
            except (DecodeError, ValidationError):
                # The envelope is checked first on the full path: its error wins.
                split_headers(headers)
                raise
            except Exception as exc:
                split_headers(headers)
                raise DecodeError(
                    f"the {codec.name!r} codec could not read a message on {topic!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            event = _quick(message, payload)
            if event is None:
                envelope, user = split_headers(headers)
                event = _build(message, envelope, user, payload)
            if validate is not None:
                _validate(event, validate)
            return event
    # The envelope first: an ambiguous or unreadable one is refused whatever the body.
    envelope, user = split_headers(headers)
    content_type = envelope.get("content-type")
    if content_type is not None:
        content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type is not None and content_type.startswith("application/cloudevents"):
        payload = _structured(message, envelope, content_type, decoder_for)
    else:
        codec = decoder_for(content_type)
        if codec is None:
            raise DecodeError(f"no installed codec reads content type {content_type!r}")
        try:
            payload = codec.decode(value, topic=topic, headers=headers)
        except (DecodeError, ValidationError):
            raise
        except Exception as exc:
            raise DecodeError(
                f"the {codec.name!r} codec could not read a message on {topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
    event = _build(message, envelope, user, payload)
    if validate is not None:
        _validate(event, validate)
    return event


def _validate(event: Event, validate: Callable[[Any], object] | None) -> None:
    if validate is None:
        return
    topic = event.topic
    try:
        ok = validate(event.payload)
    except ValidationError:
        raise
    except Exception as exc:
        raise SchemaValidationError(
            f"the validator of {topic!r} raised {type(exc).__name__}: {exc}", field="payload"
        ) from exc
    if ok is False:
        raise SchemaValidationError(f"rejected by the validator of {topic!r}", field="payload")
