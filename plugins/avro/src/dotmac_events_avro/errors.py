"""Errors of the Avro codec, all inside the ``dotmac.events`` error tree.

- :class:`AvroValidationError`: a payload does not fit its schema (publish time).
- :class:`SchemaLoadError`: a configured schema cannot be read or parsed.
- :class:`SchemaRegistryError` and its leaves: a schema registry refused or failed.

When the codec meets a registry failure while encoding or decoding it raises
:class:`~dotmac.events.errors.EncodeError` or :class:`~dotmac.events.errors.DecodeError`
chained (``__cause__``) to the registry error, so the bus's contract holds: encode
failures are ``EncodeError`` and decode failures dead-letter as ``"decode"``.
"""

from __future__ import annotations

from dotmac.events.errors import CodecError, ConfigurationError, EncodeError, SchemaValidationError

__all__ = [
    "AvroValidationError",
    "IncompatibleSchemaError",
    "InvalidSchemaError",
    "SchemaLoadError",
    "SchemaNotFoundError",
    "SchemaRegistryError",
    "SchemaRegistryUnavailableError",
    "SubjectNotFoundError",
]


class AvroValidationError(EncodeError, SchemaValidationError):
    """A payload does not fit the Avro schema of its topic. Nothing was sent.

    It is both an :class:`~dotmac.events.errors.EncodeError` (a codec failure) and a
    :class:`~dotmac.events.errors.SchemaValidationError`. ``field`` is the path of the
    offending value (``payload['items'][0]['qty']``), ``expected`` the Avro type it
    must have, ``actual`` the Python type it has, ``schema_name`` the record's full
    name. Messages never contain payload values, which may be confidential.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str,
        expected: str,
        actual: str,
        schema_name: str | None = None,
        topic: str | None = None,
    ) -> None:
        super().__init__(message, field=field)
        self.expected = expected
        self.actual = actual
        self.schema_name = schema_name
        self.topic = topic


class SchemaLoadError(ConfigurationError):
    """A schema given to the codec (``.avsc`` file, dict, JSON text) cannot be used."""


class SchemaRegistryError(CodecError):
    """A schema registry answered with an error or could not be reached.

    ``status`` is the HTTP status (``None`` for the in-process registry or a network
    failure), ``error_code`` the registry's own code (``40401``, ``409``, ...) and
    ``retriable`` whether the same call may succeed later.
    """

    retriable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: int | None = None,
        retriable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        if retriable is not None:
            self.retriable = retriable


class SchemaNotFoundError(SchemaRegistryError):
    """No schema with that id, or no such version of a subject (40402, 40403)."""


class SubjectNotFoundError(SchemaNotFoundError):
    """The subject has no registered schema (40401)."""


class IncompatibleSchemaError(SchemaRegistryError):
    """The schema breaks the subject's compatibility rule (HTTP 409)."""


class InvalidSchemaError(SchemaRegistryError):
    """The registry rejected the schema text as invalid Avro (42201)."""


class SchemaRegistryUnavailableError(SchemaRegistryError):
    """The registry could not be reached, timed out or failed (5xx). Retriable."""

    retriable = True
