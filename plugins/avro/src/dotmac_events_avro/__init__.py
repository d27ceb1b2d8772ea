"""dotmac-events-avro: the ``avro`` codec (fastavro, Confluent wire format).

This module holds only the plugin's hook implementation and its public names.
"""

from __future__ import annotations

from dotmac.events import CodecSpec, hookimpl
from dotmac.events.registry import Registry

from .codec import CONTENT_TYPE, MAGIC_BYTE, AvroCodec, frame, schema_id_of, unframe
from .compat import check_compatibility, read_problem
from .errors import (
    AvroValidationError,
    IncompatibleSchemaError,
    InvalidSchemaError,
    SchemaLoadError,
    SchemaNotFoundError,
    SchemaRegistryError,
    SchemaRegistryUnavailableError,
    SubjectNotFoundError,
)
from .http import HttpSchemaRegistry
from .registry import (
    ENV_REGISTRY_URL,
    InMemorySchemaRegistry,
    RegisteredSchema,
    SchemaRegistry,
    default_registry,
    record_name_strategy,
    set_default_registry,
    topic_name_strategy,
    topic_record_name_strategy,
)
from .schema import AvroSchema, SchemaSource, load_schema

__all__ = [
    "CONTENT_TYPE",
    "ENV_REGISTRY_URL",
    "MAGIC_BYTE",
    "AvroCodec",
    "AvroSchema",
    "AvroValidationError",
    "HttpSchemaRegistry",
    "InMemorySchemaRegistry",
    "IncompatibleSchemaError",
    "InvalidSchemaError",
    "RegisteredSchema",
    "SchemaLoadError",
    "SchemaNotFoundError",
    "SchemaRegistry",
    "SchemaRegistryError",
    "SchemaRegistryUnavailableError",
    "SchemaSource",
    "SubjectNotFoundError",
    "check_compatibility",
    "default_registry",
    "frame",
    "load_schema",
    "read_problem",
    "record_name_strategy",
    "schema_id_of",
    "set_default_registry",
    "topic_name_strategy",
    "topic_record_name_strategy",
    "unframe",
]


@hookimpl
def dotmac_events_register_codecs(register: Registry) -> None:
    register.add_codec(
        CodecSpec(
            name="avro",
            content_type=CONTENT_TYPE,
            factory=AvroCodec,
            description="Avro binary in the Confluent wire format, schema-checked (fastavro)",
        )
    )
