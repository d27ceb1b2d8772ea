"""Schema registries: the interface, the in-process registry and subject naming.

A registry maps *subjects* (names under which a schema evolves) to versions, and
gives each distinct schema a global integer id. The id is what the Confluent wire
format carries in front of every Avro body. The interface is synchronous because
codecs are: the HTTP client caches what it learns, so a running bus touches the
network only the first time it meets a schema (see ``docs/codecs/avro.md``).
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Callable
from typing import Literal, Union

from attrs import frozen

from dotmac.events.errors import ConfigurationError

from .compat import COMPATIBILITY_LEVELS, check_compatibility
from .errors import (
    IncompatibleSchemaError,
    InvalidSchemaError,
    SchemaLoadError,
    SchemaNotFoundError,
    SubjectNotFoundError,
)
from .schema import AvroSchema, normalize_schema_text

__all__ = [
    "ENV_REGISTRY_URL",
    "InMemorySchemaRegistry",
    "RegisteredSchema",
    "SchemaRegistry",
    "SubjectStrategy",
    "default_registry",
    "record_name_strategy",
    "resolve_subject_strategy",
    "set_default_registry",
    "topic_name_strategy",
    "topic_record_name_strategy",
]

log = logging.getLogger(__name__)

ENV_REGISTRY_URL = "DOTMAC_EVENTS_SCHEMA_REGISTRY_URL"


@frozen
class RegisteredSchema:
    """One version of a subject: its ``schema_id`` (global) and ``version`` (per subject)."""

    subject: str
    version: int
    schema_id: int
    schema: str


class SchemaRegistry(abc.ABC):
    """What the Avro codec needs from a schema registry. All methods are synchronous.

    Schemas travel as JSON text, as in the Confluent Schema Registry REST API.
    Implementations raise :class:`~dotmac_events_avro.errors.SchemaRegistryError`
    subclasses: ``SubjectNotFoundError``, ``SchemaNotFoundError``,
    ``IncompatibleSchemaError``, ``InvalidSchemaError`` or
    ``SchemaRegistryUnavailableError``.
    """

    @abc.abstractmethod
    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject`` (idempotent); return its id."""

    @abc.abstractmethod
    def lookup(self, subject: str, schema: str) -> int:
        """Return the id of ``schema`` if it is already a version of ``subject``."""

    @abc.abstractmethod
    def get_schema(self, schema_id: int) -> str:
        """Return the schema text with this id."""

    @abc.abstractmethod
    def latest(self, subject: str) -> RegisteredSchema:
        """Return the newest version of ``subject``."""


class InMemorySchemaRegistry(SchemaRegistry):
    """A registry inside the process, for tests and single-service use.

    It behaves like the Confluent Schema Registry: ids are global and start at 1,
    one schema registered under several subjects keeps one id, registering a schema
    a subject already has returns its id, and a new version must satisfy the
    subject's compatibility level (``BACKWARD`` by default, as in Confluent's
    registry; see :meth:`set_compatibility`). Thread-safe.
    """

    def __init__(self, compatibility: str = "BACKWARD") -> None:
        self._lock = threading.Lock()
        self._texts: dict[int, str] = {}
        self._parsed: dict[int, AvroSchema] = {}
        self._ids: dict[str, int] = {}  # normalized text -> id
        self._subjects: dict[str, list[int]] = {}  # subject -> ids, version order
        self._compatibility: dict[str | None, str] = {None: self._level(compatibility)}

    @staticmethod
    def _level(level: str) -> str:
        upper = str(level).upper()
        if upper not in COMPATIBILITY_LEVELS:
            raise ConfigurationError(
                f"unknown compatibility level {level!r}; use one of {', '.join(COMPATIBILITY_LEVELS)}"
            )
        return upper

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Set the compatibility level of ``subject`` (or the default for all subjects)."""
        with self._lock:
            self._compatibility[subject] = self._level(level)

    def compatibility(self, subject: str | None = None) -> str:
        """The compatibility level that applies to ``subject``."""
        return self._compatibility.get(subject) or self._compatibility[None]

    def register(self, subject: str, schema: str) -> int:
        _check_subject(subject)
        try:
            normalized = normalize_schema_text(schema)
            parsed = AvroSchema.from_text(schema)
        except (ValueError, SchemaLoadError) as exc:
            raise InvalidSchemaError(
                f"invalid Avro schema for subject {subject!r}: {exc}", error_code=42201
            ) from exc
        with self._lock:
            versions = self._subjects.get(subject, [])
            schema_id = self._ids.get(normalized)
            if schema_id is not None and schema_id in versions:
                return schema_id
            problem = check_compatibility(
                self.compatibility(subject), parsed, [self._parsed[i] for i in versions]
            )
            if problem is not None:
                raise IncompatibleSchemaError(
                    f"schema for subject {subject!r} is incompatible ({self.compatibility(subject)}): "
                    f"{problem}",
                    error_code=409,
                )
            if schema_id is None:
                schema_id = len(self._texts) + 1
                self._texts[schema_id] = schema
                self._parsed[schema_id] = parsed
                self._ids[normalized] = schema_id
            self._subjects.setdefault(subject, []).append(schema_id)
            log.debug("registered schema id %d as version %d of %s", schema_id, len(versions) + 1, subject)
            return schema_id

    def lookup(self, subject: str, schema: str) -> int:
        try:
            normalized = normalize_schema_text(schema)
        except ValueError as exc:
            raise InvalidSchemaError(f"invalid schema JSON for subject {subject!r}: {exc}") from exc
        with self._lock:
            versions = self._subjects.get(subject)
            if not versions:
                raise SubjectNotFoundError(f"subject {subject!r} not found", error_code=40401)
            schema_id = self._ids.get(normalized)
            if schema_id is None or schema_id not in versions:
                raise SchemaNotFoundError(
                    f"the schema is not registered under subject {subject!r}", error_code=40403
                )
            return schema_id

    def get_schema(self, schema_id: int) -> str:
        with self._lock:
            text = self._texts.get(schema_id)
        if text is None:
            raise SchemaNotFoundError(f"schema id {schema_id} not found", error_code=40403)
        return text

    def latest(self, subject: str) -> RegisteredSchema:
        return self.version(subject, -1)

    def version(self, subject: str, version: int) -> RegisteredSchema:
        """Version ``version`` (1-based; ``-1`` is the latest) of ``subject``."""
        with self._lock:
            versions = self._subjects.get(subject)
            if not versions:
                raise SubjectNotFoundError(f"subject {subject!r} not found", error_code=40401)
            index = len(versions) - 1 if version == -1 else version - 1
            if not 0 <= index < len(versions):
                raise SchemaNotFoundError(
                    f"version {version} of subject {subject!r} not found", error_code=40402
                )
            schema_id = versions[index]
            return RegisteredSchema(subject, index + 1, schema_id, self._texts[schema_id])

    def subjects(self) -> list[str]:
        """Every subject with at least one version, sorted."""
        with self._lock:
            return sorted(self._subjects)

    def versions(self, subject: str) -> list[int]:
        """The version numbers of ``subject`` (``[1, 2, ...]``)."""
        with self._lock:
            versions = self._subjects.get(subject)
            if not versions:
                raise SubjectNotFoundError(f"subject {subject!r} not found", error_code=40401)
            return list(range(1, len(versions) + 1))

    def __repr__(self) -> str:
        return f"<InMemorySchemaRegistry subjects={len(self._subjects)} schemas={len(self._texts)}>"


def _check_subject(subject: str) -> None:
    if not isinstance(subject, str) or not subject or len(subject) > 1000 or "\x00" in subject:
        raise ConfigurationError(f"invalid schema registry subject {subject!r}")


# -- subject naming ---------------------------------------------------------------------------

SubjectStrategy = Callable[[str, Union[str, None]], str]
"""``strategy(topic, record_name) -> subject``. ``record_name`` is the full name of the
record (from the schema, or the event type when the schema comes from the registry)."""


def topic_name_strategy(topic: str, record_name: str | None) -> str:
    """``<topic>-value``: one evolving schema per topic (Confluent's default)."""
    return f"{topic}-value"


def record_name_strategy(topic: str, record_name: str | None) -> str:
    """``<record full name>``: one evolving schema per record type, across topics."""
    if not record_name:
        raise ConfigurationError(
            f"the record-name subject strategy needs a record name for topic {topic!r}: "
            "configure a schema for it or set the event's metadata.event_type to the record's full name"
        )
    return record_name


def topic_record_name_strategy(topic: str, record_name: str | None) -> str:
    """``<topic>-<record full name>``: several record types per topic, each evolving."""
    return f"{topic}-{record_name_strategy(topic, record_name)}"


_STRATEGIES: dict[str, SubjectStrategy] = {
    "topic_name": topic_name_strategy,
    "record_name": record_name_strategy,
    "topic_record_name": topic_record_name_strategy,
}

StrategyName = Literal["topic_name", "record_name", "topic_record_name"]


def resolve_subject_strategy(strategy: str | SubjectStrategy) -> SubjectStrategy:
    """A strategy from its name (``topic_name``, ``record_name``, ``topic_record_name``;
    hyphens and Confluent's ``TopicNameStrategy`` spellings work too) or a callable."""
    if callable(strategy):
        return strategy
    key = str(strategy).strip()
    aliases = {
        "topicnamestrategy": "topic_name",
        "recordnamestrategy": "record_name",
        "topicrecordnamestrategy": "topic_record_name",
    }
    key = aliases.get(key.lower(), key.lower().replace("-", "_"))
    found = _STRATEGIES.get(key)
    if found is None:
        raise ConfigurationError(
            f"unknown subject strategy {strategy!r}; use one of {', '.join(_STRATEGIES)} or a callable"
        )
    return found


# -- the process-wide default -----------------------------------------------------------------

_default: SchemaRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> SchemaRegistry:
    """The registry of codecs built without one (e.g. for decoding by content type).

    It is an :class:`InMemorySchemaRegistry` shared by the whole process, or an
    :class:`~dotmac_events_avro.http.HttpSchemaRegistry` when the environment
    variable ``DOTMAC_EVENTS_SCHEMA_REGISTRY_URL`` is set on first use. Replace it
    with :func:`set_default_registry`.
    """
    global _default
    with _default_lock:
        if _default is None:
            url = os.environ.get(ENV_REGISTRY_URL)
            if url:
                from .http import HttpSchemaRegistry

                _default = HttpSchemaRegistry(url)
            else:
                _default = InMemorySchemaRegistry()
        return _default


def set_default_registry(registry: SchemaRegistry | None) -> None:
    """Replace the process-wide default registry (``None``: build it again on next use).

    Codecs already built keep the registry they were built with.
    """
    global _default
    if registry is not None and not isinstance(registry, SchemaRegistry):
        raise ConfigurationError(f"expected a SchemaRegistry, got {type(registry).__name__}")
    with _default_lock:
        _default = registry
