"""The Avro codec: schema-checked payloads in the Confluent wire format.

Every message body is ``0x00`` (magic byte), the writer schema's registry id as a
4-byte big-endian unsigned integer, then the payload as Avro binary (no container
file header). That is what Confluent's serializers write, so the bytes can be read
by any Kafka tool that speaks Schema Registry, and the other way round.
"""

from __future__ import annotations

import asyncio
import fnmatch
import io
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from attrs import frozen
from fastavro import schemaless_reader, schemaless_writer

from dotmac.events.codec import Codec
from dotmac.events.errors import ConfigurationError, DecodeError, EncodeError
from dotmac.events.event import thaw

from .compat import read_problem
from .errors import AvroValidationError, SchemaLoadError, SchemaNotFoundError, SchemaRegistryError
from .registry import (
    InMemorySchemaRegistry,
    SchemaRegistry,
    SubjectStrategy,
    default_registry,
    resolve_subject_strategy,
    topic_name_strategy,
)
from .schema import AvroSchema, SchemaSource, load_schema
from .validate import Mismatch, format_path

if TYPE_CHECKING:
    from dotmac.events.event import Event

__all__ = ["CONTENT_TYPE", "MAGIC_BYTE", "AvroCodec", "frame", "schema_id_of", "unframe"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/avro"
MAGIC_BYTE = 0
HEADER_SIZE = 5
_PATTERN_CHARS = frozenset("*?[")
_CACHE_LIMIT = 10_000
_MISSING_ID_TTL = 30.0

# What fastavro raises for bytes that are not a valid encoding of the writer schema.
_READ_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, StopIteration)
_WRITE_ERRORS = (ValueError, TypeError, OverflowError, AttributeError, KeyError, IndexError)


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header (magic byte, schema id)."""
    return bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big") + body


def schema_id_of(data: bytes) -> int:
    """The schema id in the Confluent header of ``data``.

    Raises :class:`~dotmac.events.errors.DecodeError` for a message shorter than the
    header or with a wrong magic byte.
    """
    if len(data) < HEADER_SIZE:
        raise DecodeError(
            f"truncated message: {len(data)} bytes, "
            f"a Confluent-framed Avro message has at least {HEADER_SIZE}"
        )
    if data[0] != MAGIC_BYTE:
        raise DecodeError(
            f"wrong magic byte 0x{data[0]:02x} (expected 0x00): not a Confluent-framed Avro message"
        )
    return int.from_bytes(data[1:HEADER_SIZE], "big")


def unframe(data: bytes) -> tuple[int, bytes]:
    """Split a Confluent-framed message into (schema id, Avro body); see :func:`schema_id_of`."""
    return schema_id_of(data), bytes(data[HEADER_SIZE:])


@frozen
class _Writer:
    schema_id: int
    schema: AvroSchema
    subject: str
    prefix: bytes
    check: Callable[[Any], None]
    expires: float | None


class _SchemaMap:
    """Schemas by exact name first, then by the first matching glob pattern."""

    def __init__(self, sources: Mapping[str, SchemaSource] | None, what: str) -> None:
        self.exact: dict[str, AvroSchema] = {}
        self.patterns: list[tuple[str, AvroSchema]] = []
        if sources is None:
            return
        if not isinstance(sources, Mapping):
            raise ConfigurationError(f"AvroCodec {what} must be a mapping of name to schema")
        for key, source in sources.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"AvroCodec {what} keys must be non-empty strings, got {key!r}")
            schema = load_schema(source, origin=_origin(what, key, source))
            if not schema.holds_records:
                raise SchemaLoadError(
                    f"the schema for {key!r} in {what} is a {schema.type}, not a record "
                    "or a union of records: an event payload is a dict"
                )
            if _PATTERN_CHARS & set(key):
                self.patterns.append((key, schema))
            else:
                self.exact[key] = schema

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns)

    def get(self, name: str) -> AvroSchema | None:
        found = self.exact.get(name)
        if found is not None or not self.patterns:
            return found
        for pattern, schema in self.patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return schema
        return None

    def names(self) -> list[str]:
        return [*self.exact, *(p for p, _ in self.patterns)]


def _origin(what: str, key: str, source: SchemaSource) -> str | None:
    if isinstance(source, (Mapping, list, tuple)):
        return f"the schema for {key!r} in {what}"
    return None  # files and texts name themselves


def _build_registry(registry: SchemaRegistry | str | Mapping[str, Any] | None) -> SchemaRegistry:
    if registry is None or registry == "default":
        return default_registry()
    if isinstance(registry, SchemaRegistry):
        return registry
    if registry == "memory":
        return InMemorySchemaRegistry()
    from .http import HttpSchemaRegistry

    if isinstance(registry, str):
        return HttpSchemaRegistry(registry)
    if isinstance(registry, Mapping):
        options = dict(registry)
        if "url" not in options:
            raise ConfigurationError("AvroCodec registry options need a 'url'")
        try:
            return HttpSchemaRegistry(**options)
        except TypeError as exc:
            raise ConfigurationError(f"bad schema registry options: {exc}") from None
    raise ConfigurationError(
        "AvroCodec registry must be a SchemaRegistry, an http(s) URL, a dict of options, "
        f"'memory' or 'default', not {type(registry).__name__}"
    )


class AvroCodec(Codec):
    """Avro payloads, checked against a schema, framed for the Confluent ecosystem.

    ``schemas`` maps topics (exact names or glob patterns such as ``"orders.*"``) to
    schemas and ``event_schemas`` maps event types (``metadata.event_type``) to
    schemas; a schema is a dict, JSON text, an ``.avsc`` path or an
    :class:`~dotmac_events_avro.schema.AvroSchema`, and must be a record. For an
    event the codec takes the schema of its event type, else of its topic, else
    the latest version of its subject in the registry.

    The same schemas are the *reader* schemas when decoding: a consumer configured
    with a newer compatible schema reads events written with older ones (added
    fields take their defaults, removed fields are skipped). Without a configured
    schema an event is decoded with the schema it was written with.

    ``registry`` is a :class:`~dotmac_events_avro.registry.SchemaRegistry`, an
    ``http(s)://`` URL of a Confluent Schema Registry, a dict of
    :class:`~dotmac_events_avro.http.HttpSchemaRegistry` options (with ``url``),
    ``"memory"`` (a private in-process registry) or ``None``/``"default"`` (the
    process-wide :func:`~dotmac_events_avro.registry.default_registry`).
    ``subject_strategy`` names subjects: ``"topic_name"`` (``<topic>-value``, the
    default), ``"record_name"`` (the record's full name), ``"topic_record_name"``
    or a callable ``(topic, record_name) -> subject``. With ``auto_register`` (the
    default) configured schemas are registered on first use; without it they must
    already be registered. With ``strict`` (the default) a payload key that is not a
    field of the record is an error instead of being dropped silently.
    ``latest_ttl`` (seconds, default: forever) bounds how long a schema taken from
    the registry's latest version is used before the registry is asked again.

    Encoding raises :class:`~dotmac_events_avro.errors.AvroValidationError` (an
    ``EncodeError``) for a payload that does not fit, naming the field and the
    expected type. Decoding raises ``DecodeError`` for a truncated body, a wrong
    magic byte, an unknown schema id, a writer schema the reader schema cannot
    read, or malformed Avro; the bus dead-letters such messages with the reason.
    """

    name = "avro"
    content_type = CONTENT_TYPE

    def __init__(
        self,
        *,
        schemas: Mapping[str, SchemaSource] | None = None,
        event_schemas: Mapping[str, SchemaSource] | None = None,
        registry: SchemaRegistry | str | Mapping[str, Any] | None = None,
        subject_strategy: str | SubjectStrategy = "topic_name",
        auto_register: bool = True,
        strict: bool = True,
        latest_ttl: float | None = None,
    ) -> None:
        for flag, value in (("auto_register", auto_register), ("strict", strict)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"AvroCodec {flag} must be true or false, got {value!r}")
        if latest_ttl is not None and (
            isinstance(latest_ttl, bool) or not isinstance(latest_ttl, (int, float)) or latest_ttl <= 0
        ):
            raise ConfigurationError(f"AvroCodec latest_ttl must be > 0 seconds or None, got {latest_ttl!r}")
        self._topic_schemas = _SchemaMap(schemas, "schemas")
        self._event_schemas = _SchemaMap(event_schemas, "event_schemas")
        self.registry = _build_registry(registry)
        self._strategy = resolve_subject_strategy(subject_strategy)
        self.auto_register = auto_register
        self.strict = strict
        self.latest_ttl = float(latest_ttl) if latest_ttl is not None else None
        # The event type matters for the writer only if it can change the schema or subject.
        self._by_type = bool(self._event_schemas) or self._strategy is not topic_name_strategy
        self._writers: dict[tuple[str, str | None], _Writer] = {}
        self._by_id: dict[int, AvroSchema] = {}
        self._missing_ids: dict[int, float] = {}
        self._readers: dict[tuple[str, str | None], AvroSchema | None] = {}
        self._problems: dict[tuple[int, str], str | None] = {}

    def __repr__(self) -> str:
        topics = self._topic_schemas.names()
        types = self._event_schemas.names()
        return f"<AvroCodec registry={self.registry!r} topics={topics} event_types={types}>"

    # -- schema selection ---------------------------------------------------------------
    def schema_for(self, topic: str, event_type: str | None = None) -> AvroSchema | None:
        """The configured schema for an event type or topic (``None`` if none is)."""
        if event_type is not None and self._event_schemas:
            found = self._event_schemas.get(event_type)
            if found is not None:
                return found
        return self._topic_schemas.get(topic)

    def registry_subject(self, topic: str) -> str | None:
        """The registry subject whose latest version ``topic``'s events are written
        with when no schema is configured for it; ``None`` when the subject depends on
        the event type (the record-name strategies)."""
        try:
            return self._strategy(topic, None)
        except ConfigurationError:
            return None

    def _writer(self, topic: str, event_type: str | None) -> _Writer:
        key = (topic, event_type if self._by_type else None)
        writer = self._writers.get(key)
        if writer is not None and (writer.expires is None or writer.expires > time.monotonic()):
            return writer
        writer = self._resolve_writer(topic, event_type)
        if len(self._writers) >= _CACHE_LIMIT:
            self._writers.clear()
        self._writers[key] = writer
        return writer

    def _resolve_writer(self, topic: str, event_type: str | None) -> _Writer:
        schema = self.schema_for(topic, event_type)
        expires: float | None = None
        try:
            if schema is not None:
                subject = self._strategy(topic, schema.name)
                if self.auto_register:
                    schema_id = self.registry.register(subject, schema.text)
                else:
                    schema_id = self.registry.lookup(subject, schema.text)
                self._by_id.setdefault(schema_id, schema)
            else:
                subject = self._strategy(topic, event_type)
                latest = self.registry.latest(subject)
                schema_id = latest.schema_id
                schema = self._schema_by_id(schema_id, latest.schema)
                if self.latest_ttl is not None:
                    expires = time.monotonic() + self.latest_ttl
        except SchemaNotFoundError as exc:
            configured = "no schema is configured for it and " if schema is None else ""
            raise EncodeError(
                f"no Avro schema for topic {topic!r} (event type {event_type!r}): {configured}{exc}"
            ) from exc
        except SchemaRegistryError as exc:
            raise EncodeError(f"no Avro schema id for topic {topic!r}: {exc}") from exc
        except ConfigurationError as exc:
            raise EncodeError(f"cannot encode topic {topic!r} as Avro: {exc}") from exc
        if not schema.holds_records:
            raise EncodeError(
                f"the schema of subject {subject!r} (id {schema_id}) is a {schema.type}: "
                "an event payload is a record"
            )
        return _Writer(
            schema_id=schema_id,
            schema=schema,
            subject=subject,
            prefix=frame(schema_id, b""),
            check=schema.validator(strict=self.strict),
            expires=expires,
        )

    def _schema_by_id(self, schema_id: int, text: str) -> AvroSchema:
        schema = self._by_id.get(schema_id)
        if schema is None:
            schema = AvroSchema.from_text(text, origin=f"schema id {schema_id}")
            self._by_id[schema_id] = schema
        return schema

    def prepare_blocking(self, topics: Iterable[str] = ()) -> None:
        """Resolve schema ids now instead of on first use (blocking registry calls).

        Covers every topic configured by exact name plus ``topics``. Raises the
        ``EncodeError`` the first publish would raise.
        """
        for topic in [*self._topic_schemas.exact, *topics]:
            self._writer(topic, None)

    async def prepare(self, topics: Iterable[str] = ()) -> None:
        """:meth:`prepare_blocking` in a worker thread, so the event loop never waits
        on the registry. Call it after building the codec, before publishing."""
        await asyncio.to_thread(self.prepare_blocking, list(topics))

    # -- the Codec API ------------------------------------------------------------------
    def encode(self, event: Event) -> bytes:
        writer = self._writer(event.topic, event.metadata.event_type)
        payload = event.payload
        try:
            writer.check(payload)
        except Mismatch as exc:
            raise AvroValidationError(
                f"{exc.describe()} (schema {writer.schema.name}, topic {event.topic!r})",
                field=format_path(exc.path),
                expected=exc.expected,
                actual=exc.actual,
                schema_name=writer.schema.name,
                topic=event.topic,
            ) from None
        out = io.BytesIO()
        out.write(writer.prefix)
        try:
            # Tuple notation off: a tuple is an array here, never a (type name, value) pair.
            # thaw: fastavro's compiled writer takes exact dicts and lists, not the
            # event's read-only subclasses.
            schemaless_writer(out, writer.schema.parsed, thaw(payload), disable_tuple_notation=True)
        except _WRITE_ERRORS as exc:
            raise EncodeError(
                f"cannot write the payload of topic {event.topic!r} as {writer.schema.name}: "
                f"{type(exc).__name__}"
            ) from exc
        return out.getvalue()

    def decode(self, data: bytes, *, topic: str, headers: Mapping[str, str]) -> dict[str, Any]:
        schema_id = schema_id_of(data)
        writer = self._writer_schema(schema_id, topic)
        event_type = headers.get("ce_type")
        reader = self._reader(topic, event_type)
        reader_parsed = None
        if reader is not None and reader is not writer and reader.text != writer.text:
            key = (schema_id, reader.text)
            if key in self._problems:
                problem = self._problems[key]
            else:
                problem = read_problem(reader, writer, per_value=True)
                if len(self._problems) >= _CACHE_LIMIT:
                    self._problems.clear()
                self._problems[key] = problem
            if problem is not None:
                raise DecodeError(
                    f"message on {topic!r} was written with schema id {schema_id} ({writer.name}), "
                    f"which the reader schema {reader.name} cannot read: {problem}"
                )
            reader_parsed = reader.parsed
        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
        try:
            value = schemaless_reader(stream, writer.parsed, reader_parsed)
        except _READ_ERRORS as exc:
            raise DecodeError(
                f"message on {topic!r} is not valid Avro for schema id {schema_id} ({writer.name}): "
                f"{type(exc).__name__}: {_short(exc)}"
            ) from exc
        except Exception as exc:  # fastavro's SchemaResolutionError and friends
            raise DecodeError(
                f"message on {topic!r} cannot be read with schema id {schema_id} ({writer.name}): "
                f"{type(exc).__name__}: {_short(exc)}"
            ) from exc
        left = len(data) - stream.tell()
        if left:
            raise DecodeError(
                f"message on {topic!r} has {left} bytes after the Avro record of schema id {schema_id}"
            )
        if not isinstance(value, dict):
            raise DecodeError(f"message on {topic!r} holds a {type(value).__name__}, expected a record")
        return value

    def _writer_schema(self, schema_id: int, topic: str) -> AvroSchema:
        schema = self._by_id.get(schema_id)
        if schema is not None:
            return schema
        missing_until = self._missing_ids.get(schema_id)
        if missing_until is not None and missing_until > time.monotonic():
            raise DecodeError(f"message on {topic!r} names unknown schema id {schema_id}")
        try:
            text = self.registry.get_schema(schema_id)
        except SchemaNotFoundError as exc:
            # Remember the miss for a while: a stream of such messages must not turn
            # into a stream of registry calls.
            if len(self._missing_ids) >= 1024:
                self._missing_ids.clear()
            self._missing_ids[schema_id] = time.monotonic() + _MISSING_ID_TTL
            raise DecodeError(f"message on {topic!r} names unknown schema id {schema_id}: {exc}") from exc
        except SchemaRegistryError as exc:
            raise DecodeError(
                f"cannot fetch writer schema id {schema_id} for a message on {topic!r}: {exc}"
            ) from exc
        try:
            schema = AvroSchema.from_text(text, origin=f"schema id {schema_id}")
        except SchemaLoadError as exc:
            raise DecodeError(f"writer schema id {schema_id} is unusable: {exc}") from exc
        if not schema.holds_records:
            raise DecodeError(
                f"message on {topic!r} was written with schema id {schema_id}, a {schema.type}: "
                "an event payload is a record"
            )
        self._by_id[schema_id] = schema
        return schema

    def _reader(self, topic: str, event_type: str | None) -> AvroSchema | None:
        key = (topic, event_type if self._event_schemas else None)
        try:
            return self._readers[key]
        except KeyError:
            pass
        found = self.schema_for(topic, event_type)
        if len(self._readers) >= _CACHE_LIMIT:
            self._readers.clear()
        self._readers[key] = found
        return found


def _short(exc: BaseException) -> str:
    # fastavro messages can quote data; keep them short and on one line.
    text = " ".join(str(exc).split())
    return text[:200]
