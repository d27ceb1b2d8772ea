"""The event envelope: :class:`Event` and :class:`EventMetadata`.

Both are frozen attrs classes validated at construction, so a bad value fails
where it was written and never reaches a broker. An event is immutable all the way
down: its payload and headers are read-only copies (:class:`FrozenDict`,
:class:`FrozenList`) taken when it is built, so neither the code that built it nor
a handler can change what a retry, a dead letter or another subscriber sees.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from attrs import evolve, frozen

from .errors import (
    HeaderValidationError,
    InvalidTenantError,
    InvalidTopicError,
    PayloadValidationError,
    ValidationError,
)

__all__ = [
    "MAX_HEADER_COUNT",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_HEADER_VALUE_LENGTH",
    "MAX_HEADERS_TOTAL",
    "MAX_KEY_LENGTH",
    "MAX_TOPIC_LENGTH",
    "RESERVED_HEADER_PREFIXES",
    "MAX_PAYLOAD_DEPTH",
    "RESERVED_EXTENSION_NAMES",
    "Event",
    "EventMetadata",
    "FrozenDict",
    "FrozenList",
    "thaw",
    "validate_extension_name",
    "validate_header_name",
    "validate_header_value",
    "validate_tenant_id",
    "validate_topic",
]

MAX_TOPIC_LENGTH = 249
MAX_KEY_LENGTH = 1024
MAX_HEADER_COUNT = 64
MAX_HEADER_NAME_LENGTH = 128
MAX_HEADER_VALUE_LENGTH = 8 * 1024
MAX_HEADERS_TOTAL = 64 * 1024
MAX_TENANT_LENGTH = 64
MAX_ID_LENGTH = 256
MAX_PAYLOAD_DEPTH = 256
"""Dicts and lists nest at most this deep in a payload (JSON encoders stop near it too)."""

# Envelope attributes travel as ``ce_*`` headers plus ``content-type``; user headers
# may not shadow them.
RESERVED_HEADER_PREFIXES = ("ce_",)
RESERVED_HEADERS = frozenset({"content-type"})

# CloudEvents context attribute names that have a field of their own (or are the body
# itself): an extension may not take them, or two values would claim one header.
RESERVED_EXTENSION_NAMES = frozenset(
    {
        "specversion",
        "id",
        "type",
        "source",
        "time",
        "subject",
        "dataschema",
        "datacontenttype",
        "data",
        "correlationid",
        "causationid",
        "replyto",
        "schemaversion",
    }
)
# An extension travels as the header ``ce_<name>``, which must stay a header name.
MAX_EXTENSION_NAME_LENGTH = MAX_HEADER_NAME_LENGTH - len("ce_")

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]+")
_EXTENSION_RE = re.compile(r"[a-z0-9]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TENANT_RE = re.compile(r"[A-Za-z0-9_-]+")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")
# A lone surrogate is how a str carries bytes that were not UTF-8 (surrogateescape);
# no transport can write one, so text fields refuse them.
_SURROGATE = re.compile("[\ud800-\udfff]")

_K = TypeVar("_K")
_V = TypeVar("_V")


def _read_only(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(
        f"{type(self).__name__} is read-only: an event's payload and headers cannot change "
        "(copy it first: dict(...), list(...))"
    )


class FrozenDict(dict[_K, _V]):
    """A read-only ``dict``: an event's payload, its nested objects and its headers.

    It is a real ``dict`` (``isinstance``, ``==``, JSON encoders and ``**`` unpacking
    work) whose mutating methods raise :class:`TypeError`. Building one copies the
    given mapping and freezes its nested dicts and lists; ``dict(frozen)`` or
    ``frozen.copy()`` gives a plain, mutable shallow copy.
    """

    __slots__ = ()

    def __init__(self, data: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = (), /) -> None:
        super().__init__(data)
        _freeze_values(self, 0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    if not TYPE_CHECKING:
        __setitem__ = __delitem__ = __ior__ = _read_only
        clear = pop = popitem = setdefault = update = _read_only

        @classmethod
        def fromkeys(cls, iterable: Iterable[Any], value: Any = None, /) -> FrozenDict[Any, Any]:
            # dict.fromkeys would fill the new instance through __setitem__.
            return cls(dict.fromkeys(iterable, value))


class FrozenList(list[_V]):
    """A read-only ``list`` inside an event's payload (see :class:`FrozenDict`)."""

    __slots__ = ()

    def __init__(self, data: Iterable[_V] = (), /) -> None:
        super().__init__(data)
        _freeze_items(self, 0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self),))

    if not TYPE_CHECKING:
        __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
        append = extend = insert = pop = remove = clear = sort = reverse = _read_only


# Classes whose instances are immutable and hold nothing mutable: the walk stops there.
_LEAVES = frozenset({str, int, float, bool, type(None), bytes, FrozenDict, FrozenList})
_set_dict_item = dict.__setitem__
_new_dict = dict.__new__
_init_dict = dict.__init__
_set_list_item = list.__setitem__


def _frozen_headers(value: Mapping[str, str]) -> FrozenDict[str, str]:
    """A read-only copy of a mapping whose values the caller checks to be str."""
    headers: FrozenDict[str, str] = FrozenDict.__new__(FrozenDict)
    dict.__init__(headers, value)
    return headers


def _frozen(value: Any, depth: int) -> Any:
    """``value`` with its dicts, lists and sets replaced by read-only copies."""
    if depth >= MAX_PAYLOAD_DEPTH:
        raise PayloadValidationError(
            f"nests dicts and lists deeper than {MAX_PAYLOAD_DEPTH} levels (or contains itself)",
            field="payload",
        )
    if isinstance(value, dict):
        return _frozen_dict(value, depth)
    if isinstance(value, list):
        frozen_list: FrozenList[Any] = FrozenList.__new__(FrozenList)
        list.__init__(frozen_list, value)
        _freeze_items(frozen_list, depth + 1)
        return frozen_list
    if isinstance(value, tuple) and value.__class__ is tuple:
        return tuple(v if v.__class__ in _LEAVES else _frozen(v, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    # Other objects (datetimes, Decimals, UUIDs, enums, dataclasses, ...) are kept as
    # they are: the codec reads them, and the caller owns whether they can change.
    return value


def _frozen_dict(value: dict[Any, Any], depth: int) -> FrozenDict[Any, Any]:
    # _frozen and _freeze_values in one frame: this runs for every event built.
    result: FrozenDict[Any, Any] = _new_dict(FrozenDict)
    _init_dict(result, value)
    leaves = _LEAVES
    if not leaves.issuperset(map(type, value.values())):
        if depth >= MAX_PAYLOAD_DEPTH:
            _frozen(value, depth)  # raises
        for name, item in value.items():
            # Leaves first: the fewest steps for the commonest values.
            if item.__class__ not in leaves:
                if item.__class__ is dict and depth + 1 < MAX_PAYLOAD_DEPTH:
                    # A nested object, the common case: no detour through _frozen.
                    _set_dict_item(result, name, _frozen_dict(item, depth + 1))
                else:
                    frozen_item = _frozen(item, depth + 1)
                    if frozen_item is not item:
                        _set_dict_item(result, name, frozen_item)
    return result


def _frozen_received(value: dict[Any, Any], depth: int) -> FrozenDict[Any, Any]:
    """What ``_frozen_dict(value, depth)`` gives, for a dict a decoder has just built.

    A codec's output is mostly text and numbers with a nested object here and there:
    one pass over the items finds those without first checking every value's type
    (which costs as much as the pass again). Equal to ``_frozen_dict`` for any input,
    errors included (a property test holds it to that).
    """
    result: FrozenDict[Any, Any] = _new_dict(FrozenDict)
    _init_dict(result, value)
    leaves = _LEAVES
    for name, item in value.items():
        if item.__class__ not in leaves:
            if item.__class__ is dict and depth + 1 < MAX_PAYLOAD_DEPTH:
                _set_dict_item(result, name, _frozen_received(item, depth + 1))
            else:
                frozen_item = _frozen(item, depth + 1)
                if frozen_item is not item:
                    _set_dict_item(result, name, frozen_item)
    return result


def thaw(value: Any) -> Any:
    """A mutable copy of a frozen payload: plain ``dict`` and ``list`` all the way down.

    For code that needs exact types (a C extension that refuses subclasses of
    ``dict``) or wants to edit a copy. Other values are returned as they are.
    """
    cls = value.__class__
    if cls is FrozenDict or cls is dict:
        return {k: v if v.__class__ in _LEAVES_PLAIN else thaw(v) for k, v in value.items()}
    if cls is FrozenList or cls is list:
        return [v if v.__class__ in _LEAVES_PLAIN else thaw(v) for v in value]
    if cls is tuple:
        return tuple(v if v.__class__ in _LEAVES_PLAIN else thaw(v) for v in value)
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


_LEAVES_PLAIN = frozenset({str, int, float, bool, type(None), bytes})


def _freeze_values(target: dict[Any, Any], depth: int) -> None:
    leaves = _LEAVES
    # Most values are plain scalars; this checks them all without a Python-level loop.
    if leaves.issuperset(map(type, target.values())):
        return
    for name, value in target.items():
        if value.__class__ not in leaves:
            frozen_value = _frozen(value, depth)
            if frozen_value is not value:
                # Replacing a value of an existing key does not resize the dict, so
                # doing it while iterating is safe.
                _set_dict_item(target, name, frozen_value)


def _freeze_items(target: list[Any], depth: int) -> None:
    leaves = _LEAVES
    if leaves.issuperset(map(type, target)):
        return
    for index, value in enumerate(target):
        if value.__class__ not in leaves:
            frozen_value = _frozen(value, depth)
            if frozen_value is not value:
                _set_list_item(target, index, frozen_value)


def validate_topic(topic: object, *, field_name: str = "topic") -> str:
    """Check a topic name against Kafka's rules so it works on every transport."""
    if not isinstance(topic, str):
        raise InvalidTopicError(f"must be a str, got {type(topic).__name__}", field=field_name)
    if not topic:
        raise InvalidTopicError("must not be empty", field=field_name)
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopicError(
            f"is {len(topic)} characters long, the maximum is {MAX_TOPIC_LENGTH}", field=field_name
        )
    if topic in {".", ".."}:
        raise InvalidTopicError(f"{topic!r} is not a valid topic name", field=field_name)
    if not _TOPIC_RE.fullmatch(topic):
        raise InvalidTopicError(
            f"{topic!r} may only contain ASCII letters, digits, '.', '_' and '-'", field=field_name
        )
    return topic


def validate_tenant_id(tenant_id: object, *, field_name: str = "tenant_id") -> str | None:
    """Tenant ids are plain tokens: no separators that could reach another tenant's keys."""
    if tenant_id is None:
        return None
    if not isinstance(tenant_id, str):
        raise InvalidTenantError(f"must be a str, got {type(tenant_id).__name__}", field=field_name)
    if not tenant_id or len(tenant_id) > MAX_TENANT_LENGTH:
        raise InvalidTenantError(f"must be 1 to {MAX_TENANT_LENGTH} characters", field=field_name)
    if not _TENANT_RE.fullmatch(tenant_id):
        raise InvalidTenantError(
            f"{tenant_id!r} may only contain ASCII letters, digits, '_' and '-'", field=field_name
        )
    return tenant_id


def validate_header_name(name: object, *, field_name: str = "headers") -> str:
    if not isinstance(name, str):
        raise HeaderValidationError(f"header names must be str, got {type(name).__name__}", field=field_name)
    if not name or len(name) > MAX_HEADER_NAME_LENGTH or not _TOKEN_RE.fullmatch(name):
        raise HeaderValidationError(
            f"header name {name!r} is not an HTTP token of at most {MAX_HEADER_NAME_LENGTH} characters",
            field=field_name,
        )
    return name


def validate_extension_name(name: object, *, field_name: str = "metadata.extensions") -> str:
    """Check a CloudEvents extension attribute name; return it or raise :class:`ValidationError`.

    CloudEvents allows lower-case ASCII letters and digits only. It recommends at most
    20 characters; longer names are accepted (up to ``MAX_EXTENSION_NAME_LENGTH``)
    because producers that are not this library use them, and refusing one would
    dead-letter an otherwise valid event.
    """
    if not isinstance(name, str):
        raise ValidationError(f"extension names must be str, got {type(name).__name__}", field=field_name)
    if not name or len(name) > MAX_EXTENSION_NAME_LENGTH or not _EXTENSION_RE.fullmatch(name):
        raise ValidationError(
            f"extension name {name!r} must be 1 to {MAX_EXTENSION_NAME_LENGTH} lower-case "
            "letters a-z and digits 0-9 (CloudEvents attribute naming)",
            field=field_name,
        )
    if name in RESERVED_EXTENSION_NAMES:
        raise ValidationError(
            f"extension name {name!r} is a CloudEvents or envelope attribute with a field of its own",
            field=field_name,
        )
    return name


def _is_tenant(value: str) -> bool:
    if value in _known_tenants:
        return True
    try:
        validate_tenant_id(value)
    except InvalidTenantError:
        return False
    return True


def validate_header_value(value: object, *, field_name: str) -> str:
    if not isinstance(value, str):
        raise HeaderValidationError(f"must be a str, got {type(value).__name__}", field=field_name)
    if len(value) > MAX_HEADER_VALUE_LENGTH:
        raise HeaderValidationError(
            f"is {len(value)} characters long, the maximum is {MAX_HEADER_VALUE_LENGTH}",
            field=field_name,
        )
    if _BAD_VALUE_CHARS.search(value):
        raise HeaderValidationError("must not contain CR, LF or NUL", field=field_name)
    if not value.isascii() and _SURROGATE.search(value):
        raise HeaderValidationError("must be valid Unicode (it holds a lone surrogate)", field=field_name)
    return value


# Names and tokens that passed validation once. Events on one topic repeat the same
# topic, header names and tenant over and over; remembering them keeps the regular
# expressions off the hot path (every event is built twice: by its publisher and
# again by each consumer). Only exact ``str`` instances are remembered, and the sets
# are emptied when they reach ``_CACHE_LIMIT`` so hostile input cannot grow them.
_CACHE_LIMIT = 4096
_known_topics: set[str] = set()
_known_header_names: set[str] = set()
_known_tenants: set[str] = set()
_NOTHING: Any = object()
_EMPTY_HEADERS: FrozenDict[str, str] = FrozenDict()
_set = object.__setattr__


def _remember(cache: set[str], value: Any) -> None:
    if value.__class__ is str:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache.add(value)


def _topic_field(topic: Any, field_name: str) -> None:
    if topic.__class__ is not str or topic not in _known_topics:
        validate_topic(topic, field_name=field_name)
        _remember(_known_topics, topic)


def _header_name_field(name: Any) -> None:
    validate_header_name(name)
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_HEADER_PREFIXES):
        raise HeaderValidationError(
            f"header name {name!r} is reserved for envelope attributes (ce_*, content-type)",
            field="headers",
        )
    _remember(_known_header_names, name)


# Small sets of user headers that passed validation, by their (name, value) pairs, each
# with its read-only copy. Publishers attach the same few headers to event after
# event; those events share one checked copy (it cannot change), so the check and the
# copy happen once. Only exact ``str`` names and values are remembered, at most
# _SHARED_HEADERS_CHARS characters per set, and the table is emptied when it reaches
# _CACHE_LIMIT entries, so hostile input cannot grow it.
_shared_headers: dict[tuple[tuple[str, str], ...], FrozenDict[str, str]] = {}
_SHARED_HEADERS_COUNT = 8
_SHARED_HEADERS_CHARS = 512


def _share_headers(items: tuple[tuple[str, str], ...], headers: FrozenDict[str, str]) -> None:
    total = 0
    for name, text in items:
        if name.__class__ is not str or text.__class__ is not str:
            return
        total += len(name) + len(text)
    if total <= _SHARED_HEADERS_CHARS:
        if len(_shared_headers) >= _CACHE_LIMIT:
            _shared_headers.clear()
        _shared_headers[items] = headers


def _headers_field(value: Any) -> Mapping[str, str]:
    if value is _NOTHING or value is None:
        return _EMPTY_HEADERS
    if value.__class__ is dict and 0 < len(value) <= _SHARED_HEADERS_COUNT:
        items = tuple(value.items())
        try:
            shared = _shared_headers.get(items)
        except TypeError:  # a value that cannot be hashed cannot be a header either
            shared = None
        if shared is None:
            shared = _checked_headers(value)
            _share_headers(items, shared)
        return shared
    return _checked_headers(value)


def _checked_headers(value: Any) -> FrozenDict[str, str]:
    headers: FrozenDict[str, str]
    if value.__class__ is FrozenDict:
        headers = value
    elif value.__class__ is dict or isinstance(value, Mapping):
        # A copy: the caller's mapping (or the dict behind a MappingProxyType) may change.
        # Values are checked to be str below, so there is nothing nested to freeze.
        headers = _frozen_headers(value)
    else:
        raise HeaderValidationError(
            f"must be a mapping of str to str, got {type(value).__name__}", field="headers"
        )
    if not headers:
        return headers
    if len(headers) > MAX_HEADER_COUNT:
        raise HeaderValidationError(
            f"{len(headers)} headers, the maximum is {MAX_HEADER_COUNT}", field="headers"
        )
    total = 0
    names = _known_header_names
    for name, text in headers.items():
        if name.__class__ is not str or name not in names:
            _header_name_field(name)
        if (
            text.__class__ is not str
            or len(text) > MAX_HEADER_VALUE_LENGTH
            or "\n" in text
            or "\r" in text
            or "\x00" in text
            or not text.isascii()
        ):
            validate_header_value(text, field_name=f"headers[{name!r}]")
        total += len(name) + len(text)
    if total > MAX_HEADERS_TOTAL:
        raise HeaderValidationError(
            f"headers take {total} characters, the maximum is {MAX_HEADERS_TOTAL}", field="headers"
        )
    return headers


def _extensions_field(value: Any) -> Mapping[str, str]:
    if value.__class__ is not FrozenDict and not isinstance(value, Mapping):
        raise ValidationError(
            f"must be a mapping of str to str, got {type(value).__name__}", field="metadata.extensions"
        )
    if len(value) > MAX_HEADER_COUNT:
        raise ValidationError(
            f"{len(value)} extensions, the maximum is {MAX_HEADER_COUNT}", field="metadata.extensions"
        )
    extensions = value if value.__class__ is FrozenDict else _frozen_headers(value)
    for name, text in extensions.items():
        validate_extension_name(name)
        validate_header_value(text, field_name=f"metadata.extensions[{name!r}]")
    tenant = extensions.get("tenantid")
    if tenant is not None and _is_tenant(tenant):
        # Only a foreign value the bus cannot use as a tenant travels here; a usable
        # one is Event.tenant_id, and reading it back would move it there.
        raise ValidationError(
            f"{tenant!r} is a valid tenant id: set Event.tenant_id instead",
            field="metadata.extensions['tenantid']",
        )
    return extensions


def _attribute_field(value: Any, name: str) -> None:
    # subject and dataschema come from producers that are not this library: longer
    # than an id may be, bounded like a header value since that is how they travel.
    validate_header_value(value, field_name=f"metadata.{name}")
    if not value:
        raise ValidationError("must not be empty", field=f"metadata.{name}")


_EMPTY_PAYLOAD: FrozenDict[str, Any] = FrozenDict()
_STR_ONLY = frozenset({str})


def _payload_field(payload: Any) -> Any:
    if payload is _NOTHING:
        return _EMPTY_PAYLOAD
    if payload.__class__ is FrozenDict:
        # Frozen all the way down already (evolve, with_headers, a payload passed on).
        return payload
    if not isinstance(payload, dict):
        return _other_payload(payload)
    if not _STR_ONLY.issuperset(map(type, payload)):
        for key in payload:
            if not isinstance(key, str):
                raise PayloadValidationError(
                    f"keys must be str, got {type(key).__name__} key {key!r}", field="payload"
                )
    return _frozen_dict(payload, 0)


# JSON values other than an object that a payload may be: CloudEvents data can be any
# JSON value, and an event with no data at all has the payload None.
_SCALARS = (str, int, float, bool, type(None), bytes)


def _other_payload(payload: Any) -> Any:
    if payload.__class__ is FrozenList or payload.__class__ in _SCALARS:
        return payload
    if isinstance(payload, (list, tuple)):
        return _frozen(list(payload), 0)
    raise PayloadValidationError(
        f"must be a dict (or, for data that is not a JSON object, a list, str, int, float, "
        f"bool, None, or bytes for the raw codec), got {type(payload).__name__}",
        field="payload",
    )


def _key_field(value: Any) -> None:
    if (
        value.__class__ is str
        and len(value) <= MAX_KEY_LENGTH
        and "\x00" not in value
        and (value.isascii() or not _SURROGATE.search(value))
    ):
        return
    if not isinstance(value, str):
        raise ValidationError(f"must be a str or None, got {type(value).__name__}", field="key")
    if len(value) > MAX_KEY_LENGTH:
        raise ValidationError(
            f"is {len(value)} characters long, the maximum is {MAX_KEY_LENGTH}", field="key"
        )
    if "\x00" in value:
        raise ValidationError("must not contain NUL", field="key")
    raise ValidationError("must be valid Unicode text (it holds a lone surrogate)", field="key")


def _tenant_field(value: Any) -> None:
    if value.__class__ is not str or value not in _known_tenants:
        validate_tenant_id(value)
        _remember(_known_tenants, value)


def _text_field(value: Any, name: str) -> None:
    # Callers test the common case inline; this says what is wrong.
    field_name = f"metadata.{name}"
    if value is None:
        raise ValidationError("must not be None", field=field_name)
    if not isinstance(value, str):
        raise ValidationError(f"must be a str, got {type(value).__name__}", field=field_name)
    if not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"must be 1 to {MAX_ID_LENGTH} characters", field=field_name)
    if _BAD_VALUE_CHARS.search(value):
        raise ValidationError("must not contain CR, LF or NUL", field=field_name)
    raise ValidationError("must be valid Unicode text (it holds a lone surrogate)", field=field_name)


def _text_ok(value: Any) -> bool:
    return (
        value.__class__ is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and "\n" not in value
        and "\r" not in value
        and "\x00" not in value
        and (value.isascii() or not _SURROGATE.search(value))
    )


def _to_utc(value: Any) -> datetime:
    if value.__class__ is datetime and value.tzinfo is timezone.utc:
        return value
    if not isinstance(value, datetime):
        raise ValidationError(f"must be a datetime, got {type(value).__name__}", field="metadata.occurred_at")
    try:
        aware = value.tzinfo is not None and value.utcoffset() is not None
        utc = value.astimezone(timezone.utc) if aware else None
    except OverflowError:
        # Year 1 with a positive offset or year 9999 with a negative one: no UTC datetime.
        raise ValidationError(
            f"{value.isoformat()} has no UTC equivalent between years 1 and 9999",
            field="metadata.occurred_at",
        ) from None
    except (ValueError, TypeError) as exc:  # a tzinfo whose utcoffset() is broken
        raise ValidationError(f"has an unusable tzinfo: {exc}", field="metadata.occurred_at") from exc
    if utc is None:
        raise ValidationError(
            "must be timezone-aware (use datetime.now(timezone.utc))",
            field="metadata.occurred_at",
        )
    return utc


_urandom = os.urandom
# Event ids made ahead from one read of the system's random source per 256 ids: the
# read is a system call, and on this project's benchmark machine it cost more than
# the rest of building an id. ``popleft`` and ``extend`` are atomic, so threads never
# share an id; a forked child empties the pool, so parent and child never do either.
_ID_BATCH = 256
_ids: deque[str] = deque()
_next_id = _ids.popleft


# Where each character of an id's text comes from: the index of one of its 32 random
# hex digits, or the character itself. Version 4 puts "4" in place of the 13th digit;
# the RFC 4122 variant maps the 17th digit to 8, 9, a or b (top two bits 10). The
# newline ends each id in the batch's text.
_ID_TEXT: tuple[int | str, ...] = (
    *range(0, 8), "-", *range(8, 12), "-", "4", *range(13, 16), "-",
    *range(16, 20), "-", *range(20, 32), "\n",
)  # fmt: skip
_ID_VARIANT_DIGIT = 16
_VARIANT_DIGITS = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


def _fill_ids() -> None:
    # The batch's text is written a column at a time (a strided copy of one digit of
    # every id), so the work per id is done in C rather than by a Python loop.
    digits = _urandom(16 * _ID_BATCH).hex().encode("ascii")
    width = len(_ID_TEXT)
    text = bytearray(width * _ID_BATCH)
    for column, source in enumerate(_ID_TEXT):
        if isinstance(source, str):
            text[column::width] = source.encode("ascii") * _ID_BATCH
        elif source == _ID_VARIANT_DIGIT:
            text[column::width] = digits[source::32].translate(_VARIANT_DIGITS)
        else:
            text[column::width] = digits[source::32]
    ids = text.decode("ascii").split("\n")
    ids.pop()  # after the last newline
    _ids.extend(ids)


def _new_id() -> str:
    """A random (version 4) UUID in its usual text form, at a fraction of ``uuid.uuid4``'s cost."""
    try:
        return _next_id()
    except IndexError:
        _fill_ids()
        return _new_id()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.clear)


def _now() -> datetime:
    return datetime.now(timezone.utc)


# The fields of EventMetadata and Event live in the __slots__ of a plain base class, so
# that a "draft" -- a mutable twin with the same layout -- can be filled with plain
# attribute stores and then turned into the frozen class by assigning ``__class__``.
# Each field set through object.__setattr__ (what a frozen class otherwise needs)
# cost about five times as much, 18 of them for every event published or received.
# Drafts never leave this module.
_METADATA_FIELDS = (
    "event_id",
    "event_type",
    "source",
    "occurred_at",
    "correlation_id",
    "causation_id",
    "reply_to",
    "content_type",
    "schema_version",
    "subject",
    "data_schema",
    "extensions",
)
_EVENT_FIELDS = ("topic", "payload", "key", "headers", "tenant_id", "metadata")


class _MetadataSlots:
    __slots__ = _METADATA_FIELDS


class _EventSlots:
    __slots__ = _EVENT_FIELDS


class _MetadataDraft(_MetadataSlots):
    # __weakref__ as the frozen class has it (attrs adds one): the layouts must match.
    __slots__ = ("__weakref__",)
    if TYPE_CHECKING:  # its fields are EventMetadata's

        def __setattr__(self, name: str, value: Any) -> None: ...


class _EventDraft(_EventSlots):
    __slots__ = ("__weakref__",)
    if TYPE_CHECKING:  # its fields are Event's

        def __setattr__(self, name: str, value: Any) -> None: ...


@frozen(init=False)
class EventMetadata(_MetadataSlots):
    """Envelope attributes of an event (CloudEvents-compatible).

    ``event_id`` is generated when omitted and never changes across retries,
    redeliveries, dead-lettering and replay, so handlers can deduplicate on it.
    ``event_type`` defaults to the event's topic and ``source`` to the bus's source.
    ``subject`` and ``data_schema`` are the CloudEvents ``subject`` and ``dataschema``
    attributes. ``extensions`` holds every other CloudEvents extension attribute by
    name (lower-case letters and digits, see :func:`validate_extension_name`) with
    its value as text; it is read-only, kept from a received event and written again
    when the event is published, forwarded, dead-lettered or replayed.
    """

    # No defaults here: the hand-written __init__ below is the one source of them.
    event_id: str
    event_type: str | None
    source: str | None
    occurred_at: datetime
    correlation_id: str | None
    causation_id: str | None
    reply_to: str | None
    content_type: str | None
    schema_version: str | None
    subject: str | None
    data_schema: str | None
    extensions: Mapping[str, str]

    def __init__(
        self,
        event_id: str = _NOTHING,
        event_type: str | None = None,
        source: str | None = None,
        occurred_at: datetime = _NOTHING,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reply_to: str | None = None,
        content_type: str | None = None,
        schema_version: str | None = None,
        subject: str | None = None,
        data_schema: str | None = None,
        extensions: Mapping[str, str] | None = _NOTHING,
    ) -> None:
        # Validation written out field by field: this runs for every event published
        # and every event received.
        if event_id is _NOTHING:
            event_id = _new_id()
        elif not _text_ok(event_id):
            _text_field(event_id, "event_id")
        if event_type is not None and not _text_ok(event_type):
            _text_field(event_type, "event_type")
        if source is not None and not _text_ok(source):
            _text_field(source, "source")
        occurred_at = _now() if occurred_at is _NOTHING else _to_utc(occurred_at)
        if correlation_id is not None and not _text_ok(correlation_id):
            _text_field(correlation_id, "correlation_id")
        if causation_id is not None and not _text_ok(causation_id):
            _text_field(causation_id, "causation_id")
        if reply_to is not None:
            _topic_field(reply_to, "metadata.reply_to")
        if content_type is not None and not _text_ok(content_type):
            _text_field(content_type, "content_type")
        if schema_version is not None and not _text_ok(schema_version):
            _text_field(schema_version, "schema_version")
        if subject is not None:
            _attribute_field(subject, "subject")
        if data_schema is not None:
            _attribute_field(data_schema, "data_schema")
        if (
            extensions is _NOTHING
            or extensions is None
            or (extensions.__class__ is FrozenDict and not extensions)
        ):
            extensions = _EMPTY_HEADERS
        else:
            extensions = _extensions_field(extensions)
        _set(self, "event_id", event_id)
        _set(self, "event_type", event_type)
        _set(self, "source", source)
        _set(self, "occurred_at", occurred_at)
        _set(self, "correlation_id", correlation_id)
        _set(self, "causation_id", causation_id)
        _set(self, "reply_to", reply_to)
        _set(self, "content_type", content_type)
        _set(self, "schema_version", schema_version)
        _set(self, "subject", subject)
        _set(self, "data_schema", data_schema)
        _set(self, "extensions", extensions)


def _plain_metadata(
    event_id: str, event_type: str | None, source: str | None, occurred_at: datetime, content_type: str | None
) -> EventMetadata:
    """Metadata with no optional attribute, from values the caller has checked."""
    draft = _MetadataDraft()
    draft.event_id = event_id
    draft.event_type = event_type
    draft.source = source
    draft.occurred_at = occurred_at
    draft.correlation_id = None
    draft.causation_id = None
    draft.reply_to = None
    draft.content_type = content_type
    draft.schema_version = None
    draft.subject = None
    draft.data_schema = None
    draft.extensions = _EMPTY_HEADERS
    draft.__class__ = EventMetadata  # type: ignore[assignment]
    return draft  # type: ignore[return-value]


def _fresh_metadata() -> EventMetadata:
    """``EventMetadata()``: a new id, the time now, nothing else (nothing to check)."""
    return _plain_metadata(_new_id(), None, None, _now(), None)


@frozen(init=False)
class Event(_EventSlots):
    """An event: where it goes (``topic``), what it says (``payload``) and its envelope.

    ``key`` selects the partition on partitioned transports and orders events that
    share it. ``headers`` are user headers, carried unchanged. Every field is
    validated here; an invalid value raises a subclass of
    :class:`~dotmac.events.errors.ValidationError` naming the field.

    An event never changes. ``payload`` and ``headers`` are read-only copies taken
    here (:class:`FrozenDict`; nested dicts and lists become :class:`FrozenDict` and
    :class:`FrozenList`, sets become frozensets), so changing the dict you passed in
    does not change the event, and a handler that tries to change ``event.payload``
    gets a :class:`TypeError` instead of changing what its retries see. Other objects
    in a payload (datetimes, dataclasses, ...) are kept as given; do not mutate them
    after building the event. Build a changed event with ``attrs.evolve`` or
    :meth:`with_headers`; ``dict(event.payload)`` is a mutable shallow copy.

    ``payload`` is a dict in the common case (and ``{}`` when omitted). An event whose
    data is another JSON value (CloudEvents allows any) carries it as it is: a
    :class:`FrozenList` for an array, a ``str``, ``int``, ``float`` or ``bool`` for a
    scalar, and ``None`` for an event with no data (or JSON ``null``).
    """

    # No defaults here: the hand-written __init__ below is the one source of them.
    topic: str
    # Any: a dict in the common case; see the class docstring for the other JSON values.
    payload: Any
    key: str | None
    headers: Mapping[str, str]
    tenant_id: str | None
    metadata: EventMetadata

    def __init__(
        self,
        topic: str,
        payload: Any = _NOTHING,
        key: str | None = None,
        headers: Mapping[str, str] | None = _NOTHING,
        tenant_id: str | None = None,
        metadata: EventMetadata = _NOTHING,
    ) -> None:
        _topic_field(topic, "topic")
        payload = _payload_field(payload)
        if key is not None:
            _key_field(key)
        headers = _headers_field(headers)
        if tenant_id is not None:
            _tenant_field(tenant_id)
            if metadata is not _NOTHING and "tenantid" in metadata.extensions:
                raise ValidationError(
                    "is set while metadata.extensions holds a 'tenantid' too; keep one",
                    field="tenant_id",
                )
        if metadata is _NOTHING:
            metadata = _fresh_metadata()
        elif metadata.__class__ is not EventMetadata and not isinstance(metadata, EventMetadata):
            raise ValidationError(
                f"must be an EventMetadata, got {type(metadata).__name__}", field="metadata"
            )
        if self.__class__ is Event:
            # Filled as a draft (see _EventSlots); a subclass may add slots of its own.
            _set(self, "__class__", _EventDraft)
            _finish_event(self, topic, payload, key, headers, tenant_id, metadata)  # type: ignore[arg-type]
            return
        _set(self, "topic", topic)
        _set(self, "payload", payload)
        _set(self, "key", key)
        _set(self, "headers", headers)
        _set(self, "tenant_id", tenant_id)
        _set(self, "metadata", metadata)

    @property
    def event_id(self) -> str:
        return self.metadata.event_id

    @property
    def event_type(self) -> str:
        return self.metadata.event_type or self.topic

    def with_headers(self, **headers: str) -> Event:
        """A copy with ``headers`` added (or replaced)."""
        merged = dict(self.headers)
        merged.update(headers)
        return evolve(self, headers=merged)

    def reply(self, payload: dict[str, Any], **kwargs: Any) -> Event:
        """Build the reply to this event (a request); raises if it has no ``reply_to``."""
        if self.metadata.reply_to is None:
            raise ValidationError("event has no reply_to", field="metadata.reply_to")
        return Event(
            topic=self.metadata.reply_to,
            payload=payload,
            tenant_id=kwargs.pop("tenant_id", self.tenant_id),
            metadata=EventMetadata(
                correlation_id=self.metadata.correlation_id or self.metadata.event_id,
                causation_id=self.metadata.event_id,
            ),
            **kwargs,
        )


def _received_event(
    topic: Any,
    payload: Any,
    key: Any,
    received: Mapping[str, str],
    user_names: tuple[str, ...],
    tenant_id: str | None,
    event_id: Any,
    event_type: Any,
    source: Any,
    occurred_at: datetime | None,
    content_type: Any,
) -> Event | None:
    """A received event whose envelope the wire decoder found plain, or None.

    The caller (``wire._quick``) has checked that ``user_names`` are valid user
    header names of ``received`` and that every value in ``received`` (so every text
    argument) is a ``str`` of ASCII without CR, LF or NUL, short enough for a header
    value; that ``tenant_id`` passed validation before; and that ``occurred_at`` is a
    UTC datetime (None: now). What is left to check is checked here, and anything
    that fails returns None so that the general constructors raise their precise
    errors (a payload nested too deep raises :class:`PayloadValidationError`).
    """
    if (
        topic.__class__ is not str
        or topic not in _known_topics
        or event_id is None
        or not 0 < len(event_id) <= MAX_ID_LENGTH
        or (event_type is not None and not 0 < len(event_type) <= MAX_ID_LENGTH)
        or (source is not None and not 0 < len(source) <= MAX_ID_LENGTH)
        or (content_type is not None and not 0 < len(content_type) <= MAX_ID_LENGTH)
        or (
            key is not None
            and (
                key.__class__ is not str
                or len(key) > MAX_KEY_LENGTH
                or "\x00" in key
                or (not key.isascii() and _SURROGATE.search(key))
            )
        )
    ):
        return None
    if payload.__class__ is dict and _STR_ONLY.issuperset(map(type, payload)):
        payload = _frozen_received(payload, 0)  # raises for a payload nested too deep
    else:
        payload = _payload_field(payload)
    if user_names:
        items = tuple([(name, received[name]) for name in user_names])
        frozen_headers = _shared_headers.get(items)
        if frozen_headers is None:
            frozen_headers = _new_dict(FrozenDict)
            _init_dict(frozen_headers, items)
            _share_headers(items, frozen_headers)
    else:
        frozen_headers = _EMPTY_HEADERS
    metadata = _plain_metadata(
        event_id, event_type, source, _now() if occurred_at is None else occurred_at, content_type
    )
    return _finish_event(_EventDraft(), topic, payload, key, frozen_headers, tenant_id, metadata)


def _finish_event(
    draft: _EventDraft,
    topic: str,
    payload: Any,
    key: str | None,
    headers: Mapping[str, str],
    tenant_id: str | None,
    metadata: EventMetadata,
) -> Event:
    """Fill ``draft`` with checked values and make it the :class:`Event` it stands for."""
    draft.topic = topic
    draft.payload = payload
    draft.key = key
    draft.headers = headers
    draft.tenant_id = tenant_id
    draft.metadata = metadata
    draft.__class__ = Event  # type: ignore[assignment]
    return draft  # type: ignore[return-value]
