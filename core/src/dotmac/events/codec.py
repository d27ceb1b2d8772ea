"""Codecs turn an event's payload into bytes and back. JSON is the builtin.

A codec encodes only the payload: the envelope travels as headers (CloudEvents
binary content mode), so the same codec works on every transport.
"""

from __future__ import annotations

import abc
import dataclasses
import decimal
import enum
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from .errors import DecodeError, EncodeError
from .event import FrozenDict, FrozenList

if TYPE_CHECKING:
    from .event import Event

__all__ = ["Codec", "JsonCodec", "RawCodec"]


class Codec(abc.ABC):
    """Encodes payloads for the wire. Implementations must never execute code from data.

    ``content_type`` is written to the ``content-type`` header of every message the
    codec encodes; consumers pick the codec for an incoming message by it, so
    events written with different codecs can share a topic.
    """

    name: str = "codec"
    content_type: str = "application/octet-stream"

    @abc.abstractmethod
    def encode(self, event: Event) -> bytes:
        """Return the bytes of ``event.payload``; raise :class:`EncodeError` if impossible."""

    @abc.abstractmethod
    def decode(self, data: bytes, *, topic: str, headers: Mapping[str, str]) -> Any:
        """Return the payload (a dict in the common case); raise :class:`DecodeError` for bad bytes."""


def _default(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if attrs.has(type(obj)):
        return attrs.asdict(obj, recurse=True)
    if isinstance(obj, bytes):
        raise TypeError("bytes are not JSON; encode them (base64) before publishing")
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


_PLAIN = frozenset({str, int, bool, type(None)})
_LISTS = frozenset({list, tuple, FrozenList})
_DICTS = frozenset({dict, FrozenDict})
_isfinite = math.isfinite


def _has_non_finite(payload: Any) -> bool:
    """Whether ``payload`` holds a NaN or an infinity (the fast check; no paths)."""
    stack: list[Any] = list(payload.values()) if payload.__class__ in _DICTS else [payload]
    pop, extend = stack.pop, stack.extend
    budget = 1_000_000  # a payload that contains itself stops here; the encoder refused it anyway
    while stack and budget:
        budget -= 1
        value = pop()
        cls = value.__class__
        if cls in _PLAIN:
            continue
        if cls is float:
            if not _isfinite(value):
                return True
        elif cls in _DICTS:
            extend(value.values())
        elif cls in _LISTS:
            extend(value)
        else:
            # Anything else (sets, enums, dataclasses, numpy values, float subclasses):
            # the thorough walk, which also names the place.
            return _non_finite_path({"": value}) is not None
    return False


def _non_finite_path(payload: Any) -> str | None:
    """Where ``payload`` holds a NaN or an infinity, as ``payload['a'][0]``, or None."""
    stack: list[tuple[str, Any]] = [("payload", payload)]
    seen: set[int] = set()
    while stack:
        path, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return path
            continue
        if value is None or isinstance(value, (str, int, bytes)):
            continue
        if id(value) in seen:  # a payload that contains itself is refused by the encoder
            continue
        seen.add(id(value))
        if isinstance(value, Mapping):
            stack.extend((f"{path}[{k!r}]", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, (set, frozenset)):
            stack.extend((f"{path}[...]", v) for v in value)
        elif isinstance(value, enum.Enum):
            stack.append((path, value.value))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            stack.extend((f"{path}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value))
        elif attrs.has(type(value)):
            stack.extend((f"{path}.{a.name}", getattr(value, a.name)) for a in attrs.fields(type(value)))
        elif hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy arrays and scalars
            stack.append((path, value.tolist()))
    return None


class JsonCodec(Codec):
    """Compact UTF-8 JSON with sorted keys, so equal payloads give equal bytes.

    Beyond JSON's types it writes datetimes and dates (ISO 8601), UUIDs (text),
    Decimals (text, no precision lost), enums (their value), dataclasses and attrs
    instances (as objects). Decoding gives plain JSON types back.

    NaN and infinities are refused with :class:`EncodeError`: JSON has no way to
    write them, and writing ``null`` instead would change the event silently.

    A payload that is not an object (an array, a scalar) is written as that JSON
    value. The payload ``None`` is an event with no data and is written as an empty
    body; an empty body, and the JSON ``null``, are read back as ``None``.
    """

    name = "json"
    content_type = "application/json"
    _OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY

    def encode(self, event: Event) -> bytes:
        if event.payload is None:
            return b""
        try:
            body = orjson.dumps(event.payload, default=_default, option=self._OPTIONS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise EncodeError(f"payload of {event.topic!r} is not JSON-serialisable: {exc}") from exc
        # orjson writes NaN and infinities as null. A body without null cannot hold one,
        # so only payloads that hold a null pay for the walk.
        if b"null" in body and _has_non_finite(event.payload):
            where = _non_finite_path(event.payload)
            if where is not None:
                raise EncodeError(
                    f"payload of {event.topic!r} holds a NaN or infinity at {where}; JSON cannot carry it"
                )
        return body

    def decode(self, data: bytes, *, topic: str, headers: Mapping[str, str]) -> Any:
        if not data:
            # CloudEvents binary mode: an empty body is an event with no data.
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"message on {topic!r} is not valid JSON: {exc}") from exc


class RawCodec(Codec):
    """The body as it is: the payload is ``bytes``, nothing is parsed.

    For topics whose records are not JSON and have no codec of their own (images,
    protobuf read by the handler, a producer's private format), typically with
    ``ConsumerOptions(intake="foreign")``. Publishing needs a ``bytes`` payload.
    """

    name = "raw"
    content_type = "application/octet-stream"

    def encode(self, event: Event) -> bytes:
        payload = event.payload
        if payload.__class__ is not bytes:
            raise EncodeError(
                f"the raw codec writes bytes payloads; the payload of {event.topic!r} is a "
                f"{type(payload).__name__}"
            )
        return payload

    def decode(self, data: bytes, *, topic: str, headers: Mapping[str, str]) -> Any:
        return bytes(data)
