"""The event envelope: :class:`Event` and :class:`EventMetadata`.

Both are frozen attrs classes validated at construction, so a bad value fails
where it was written and never reaches a broker.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from attrs import evolve, field, frozen

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
    "Event",
    "EventMetadata",
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

# Envelope attributes travel as ``ce_*`` headers plus ``content-type``; user headers
# may not shadow them.
RESERVED_HEADER_PREFIXES = ("ce_",)
RESERVED_HEADERS = frozenset({"content-type"})

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TENANT_RE = re.compile(r"[A-Za-z0-9_-]+")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")


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
    return value


def _headers_converter(value: Any) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if isinstance(value, MappingProxyType):
        return value
    if not isinstance(value, Mapping):
        raise HeaderValidationError(
            f"must be a mapping of str to str, got {type(value).__name__}", field="headers"
        )
    return MappingProxyType(dict(value))


def _check_headers(_inst: Any, _attr: Any, headers: Mapping[str, str]) -> None:
    if not headers:
        return
    if len(headers) > MAX_HEADER_COUNT:
        raise HeaderValidationError(
            f"{len(headers)} headers, the maximum is {MAX_HEADER_COUNT}", field="headers"
        )
    total = 0
    for name, value in headers.items():
        validate_header_name(name)
        lowered = name.lower()
        if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_HEADER_PREFIXES):
            raise HeaderValidationError(
                f"header name {name!r} is reserved for envelope attributes (ce_*, content-type)",
                field="headers",
            )
        validate_header_value(value, field_name=f"headers[{name!r}]")
        total += len(name) + len(value)
    if total > MAX_HEADERS_TOTAL:
        raise HeaderValidationError(
            f"headers take {total} characters, the maximum is {MAX_HEADERS_TOTAL}", field="headers"
        )


def _check_payload(_inst: Any, _attr: Any, payload: Any) -> None:
    if not isinstance(payload, dict):
        raise PayloadValidationError(f"must be a dict, got {type(payload).__name__}", field="payload")
    for key in payload:
        if not isinstance(key, str):
            raise PayloadValidationError(
                f"keys must be str, got {type(key).__name__} key {key!r}", field="payload"
            )


def _check_topic(_inst: Any, attr: Any, value: Any) -> None:
    validate_topic(value, field_name=attr.name)


def _check_optional_topic(_inst: Any, attr: Any, value: Any) -> None:
    if value is not None:
        validate_topic(value, field_name=f"metadata.{attr.name}")


def _check_tenant(_inst: Any, attr: Any, value: Any) -> None:
    validate_tenant_id(value, field_name=attr.name)


def _check_key(_inst: Any, _attr: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(f"must be a str or None, got {type(value).__name__}", field="key")
    if len(value) > MAX_KEY_LENGTH:
        raise ValidationError(
            f"is {len(value)} characters long, the maximum is {MAX_KEY_LENGTH}", field="key"
        )
    if "\x00" in value:
        raise ValidationError("must not contain NUL", field="key")


def _check_text(_inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    name = f"metadata.{attr.name}"
    if not isinstance(value, str):
        raise ValidationError(f"must be a str, got {type(value).__name__}", field=name)
    if not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"must be 1 to {MAX_ID_LENGTH} characters", field=name)
    if _BAD_VALUE_CHARS.search(value):
        raise ValidationError("must not contain CR, LF or NUL", field=name)


def _check_required_text(inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        raise ValidationError("must not be None", field=f"metadata.{attr.name}")
    _check_text(inst, attr, value)


def _to_utc(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"must be a datetime, got {type(value).__name__}", field="metadata.occurred_at")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            "must be timezone-aware (use datetime.now(timezone.utc))",
            field="metadata.occurred_at",
        )
    return value.astimezone(timezone.utc)


def _new_id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(timezone.utc)


@frozen
class EventMetadata:
    """Envelope attributes of an event (CloudEvents-compatible).

    ``event_id`` is generated when omitted and never changes across retries,
    redeliveries, dead-lettering and replay, so handlers can deduplicate on it.
    ``event_type`` defaults to the event's topic and ``source`` to the bus's source.
    """

    event_id: str = field(factory=_new_id, validator=_check_required_text)
    event_type: str | None = field(default=None, validator=_check_text)
    source: str | None = field(default=None, validator=_check_text)
    occurred_at: datetime = field(factory=_now, converter=_to_utc)
    correlation_id: str | None = field(default=None, validator=_check_text)
    causation_id: str | None = field(default=None, validator=_check_text)
    reply_to: str | None = field(default=None, validator=_check_optional_topic)
    content_type: str | None = field(default=None, validator=_check_text)
    schema_version: str | None = field(default=None, validator=_check_text)


def _check_metadata(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, EventMetadata):
        raise ValidationError(f"must be an EventMetadata, got {type(value).__name__}", field="metadata")


@frozen
class Event:
    """An event: where it goes (``topic``), what it says (``payload``) and its envelope.

    ``key`` selects the partition on partitioned transports and orders events that
    share it. ``headers`` are user headers, carried unchanged. Every field is
    validated here; an invalid value raises a subclass of
    :class:`~dotmac.events.errors.ValidationError` naming the field.
    """

    topic: str = field(validator=_check_topic)
    payload: dict[str, Any] = field(factory=dict, validator=_check_payload)
    key: str | None = field(default=None, validator=_check_key)
    headers: Mapping[str, str] = field(factory=dict, converter=_headers_converter, validator=_check_headers)
    tenant_id: str | None = field(default=None, validator=_check_tenant)
    metadata: EventMetadata = field(factory=EventMetadata, validator=_check_metadata)

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
