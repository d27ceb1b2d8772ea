"""Schema resolution checks, cross-checked against fastavro reading real data."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer

from dotmac.events.errors import ConfigurationError
from dotmac_events_avro import (
    AvroSchema,
    IncompatibleSchemaError,
    InMemorySchemaRegistry,
    InvalidSchemaError,
    SchemaNotFoundError,
    SubjectNotFoundError,
    check_compatibility,
    read_problem,
)


def record(*fields: dict[str, Any], name: str = "R", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
COLOR_MORE = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}
COLOR_DEFAULT = {"type": "enum", "name": "Color", "symbols": ["RED", "OTHER"], "default": "OTHER"}

# (writer, datum written, reader, expected read back)
COMPATIBLE = [
    pytest.param(record(f("a", "int")), {"a": 1}, record(f("a", "long")), {"a": 1}, id="int-to-long"),
    pytest.param(record(f("a", "int")), {"a": 1}, record(f("a", "double")), {"a": 1.0}, id="int-to-double"),
    pytest.param(
        record(f("a", "float")), {"a": 0.5}, record(f("a", "double")), {"a": 0.5}, id="float-to-double"
    ),
    pytest.param(
        record(f("a", "string")), {"a": "x"}, record(f("a", "bytes")), {"a": b"x"}, id="string-to-bytes"
    ),
    pytest.param(
        record(f("a", "int")),
        {"a": 1},
        record(f("a", "int"), f("b", "string", default="d")),
        {"a": 1, "b": "d"},
        id="added-field-with-default",
    ),
    pytest.param(
        record(f("a", "int"), f("gone", ["null", "string"], default=None)),
        {"a": 1, "gone": "x"},
        record(f("a", "int")),
        {"a": 1},
        id="removed-optional-field",
    ),
    pytest.param(
        record(f("old", "int")),
        {"old": 4},
        record(f("new", "int", aliases=["old"])),
        {"new": 4},
        id="field-alias",
    ),
    pytest.param(
        record(f("a", "int"), name="ns1.R"),
        {"a": 1},
        record(f("a", "int"), name="ns2.R"),
        {"a": 1},
        id="unqualified-name-match",
    ),
    pytest.param(
        record(f("a", "int"), name="Old"),
        {"a": 1},
        record(f("a", "int"), name="New", aliases=["Old"]),
        {"a": 1},
        id="record-alias",
    ),
    pytest.param(
        record(f("c", COLOR)), {"c": "GREEN"}, record(f("c", COLOR_MORE)), {"c": "GREEN"}, id="enum-grows"
    ),
    pytest.param(
        record(f("c", COLOR)),
        {"c": "GREEN"},
        record(f("c", COLOR_DEFAULT)),
        {"c": "OTHER"},
        id="enum-default",
    ),
    pytest.param(
        record(f("a", "int")), {"a": 1}, record(f("a", ["null", "long"])), {"a": 1}, id="into-union"
    ),
    pytest.param(
        record(f("a", ["int", "long"])),
        {"a": 2},
        record(f("a", ["long", "string"])),
        {"a": 2},
        id="union-to-union",
    ),
    pytest.param(
        record(f("xs", {"type": "array", "items": "int"})),
        {"xs": [1]},
        record(f("xs", {"type": "array", "items": "long"})),
        {"xs": [1]},
        id="array-items-promoted",
    ),
    pytest.param(
        record(f("m", {"type": "map", "values": "float"})),
        {"m": {"k": 1.0}},
        record(f("m", {"type": "map", "values": "double"})),
        {"m": {"k": 1.0}},
        id="map-values-promoted",
    ),
    pytest.param(
        record(f("t", {"type": "long", "logicalType": "timestamp-millis"})),
        {"t": 5},
        record(f("t", "long")),
        # fastavro converts by the writer's logical type: the check must not reject the pair.
        {"t": dt.datetime(1970, 1, 1, 0, 0, 0, 5000, tzinfo=dt.timezone.utc)},
        id="logical-type-ignored",
    ),
]

INCOMPATIBLE = [
    pytest.param(
        record(f("a", "long")),
        {"a": 1},
        record(f("a", "int")),
        "R.a: the reader expects int, the writer wrote long",
        id="long-to-int",
    ),
    pytest.param(
        record(f("a", "string")),
        {"a": "x"},
        record(f("a", "int")),
        "R.a: the reader expects int",
        id="string-to-int",
    ),
    pytest.param(
        record(f("a", "int")),
        {"a": 1},
        record(f("a", "int"), f("b", "string")),
        "R.b: the reader's field has no default and the writer has no such field",
        id="added-field-without-default",
    ),
    pytest.param(
        record(f("c", COLOR_MORE)),
        {"c": "BLUE"},
        record(f("c", COLOR)),
        "enum Color of the reader lacks the writer's symbols BLUE and has no default",
        id="enum-shrinks",
    ),
    pytest.param(
        record(f("h", {"type": "fixed", "name": "H", "size": 4})),
        {"h": b"abcd"},
        record(f("h", {"type": "fixed", "name": "H", "size": 8})),
        "fixed H is 8 bytes for the reader and 4",
        id="fixed-size",
    ),
    pytest.param(
        record(f("a", "int"), name="Cat"),
        {"a": 1},
        record(f("a", "int"), name="Dog"),
        "the reader's record Dog does not match the writer's Cat",
        id="record-name",
    ),
    pytest.param(
        record(f("a", ["null", "string"])),
        {"a": None},
        record(f("a", "string")),
        "R.a: the reader expects string, the writer wrote null",
        id="union-branch-dropped",
    ),
    pytest.param(
        record(f("a", "boolean")),
        {"a": True},
        record(f("a", ["null", "string"])),
        "R.a: the reader's null | string has no branch for the writer's boolean",
        id="no-union-branch",
    ),
    pytest.param(
        record(f("xs", {"type": "array", "items": "long"})),
        {"xs": [1]},
        record(f("xs", {"type": "array", "items": "int"})),
        "R.xs[]: the reader expects int",
        id="array-items",
    ),
]


def write(schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, AvroSchema(schema).parsed, datum)
    return out.getvalue()


@pytest.mark.parametrize(("writer", "datum", "reader", "expected"), COMPATIBLE)
def test_compatible_pairs_are_readable_by_fastavro(
    writer: dict[str, Any], datum: dict[str, Any], reader: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert read_problem(AvroSchema(reader), AvroSchema(writer)) is None
    body = write(writer, datum)
    assert (
        schemaless_reader(io.BytesIO(body), AvroSchema(writer).parsed, AvroSchema(reader).parsed) == expected
    )


@pytest.mark.parametrize(("writer", "datum", "reader", "reason"), INCOMPATIBLE)
def test_incompatible_pairs_give_the_reason(
    writer: dict[str, Any], datum: dict[str, Any], reader: dict[str, Any], reason: str
) -> None:
    problem = read_problem(AvroSchema(reader), AvroSchema(writer))
    assert problem is not None
    assert reason in problem
    # fastavro agrees: reading this data with this reader fails.
    body = write(writer, datum)
    with pytest.raises(Exception):  # noqa: B017 - fastavro raises several types
        schemaless_reader(io.BytesIO(body), AvroSchema(writer).parsed, AvroSchema(reader).parsed)


def test_recursive_schemas_resolve() -> None:
    node = record(f("v", "int"), f("next", ["null", "R"], default=None))
    node_v2 = record(f("v", "long"), f("next", ["null", "R"], default=None), f("w", "int", default=0))
    assert read_problem(AvroSchema(node_v2), AvroSchema(node)) is None
    assert read_problem(AvroSchema(node), AvroSchema(node_v2)) is not None


@pytest.mark.parametrize(
    ("level", "accepted"),
    [
        ("NONE", True),
        ("BACKWARD", True),
        ("FORWARD", False),
        ("FULL", False),
    ],
)
def test_compatibility_levels(level: str, accepted: bool) -> None:
    # The new version adds a field with a default (new readers cope with old data) and
    # drops `b`, which old readers require and has no default (old readers break).
    old = AvroSchema(record(f("a", "int"), f("b", "int")))
    new = AvroSchema(record(f("a", "int"), f("c", "int", default=0)))
    assert (check_compatibility(level, new, [old]) is None) is accepted


def test_transitive_levels_check_every_version() -> None:
    v1 = AvroSchema(record(f("a", "int")))
    v2 = AvroSchema(record(f("a", "int"), f("b", "int", default=0)))
    v3 = AvroSchema(record(f("a", "int"), f("b", "int")))  # reads v2 data, not v1 data
    assert check_compatibility("BACKWARD", v3, [v1, v2]) is None
    assert "R.b" in (check_compatibility("BACKWARD_TRANSITIVE", v3, [v1, v2]) or "")


# -- the in-process registry ------------------------------------------------------------------


def test_in_memory_registry_behaves_like_confluent() -> None:
    registry = InMemorySchemaRegistry()
    v1 = AvroSchema(record(f("a", "int"))).text
    v2 = AvroSchema(record(f("a", "int"), f("b", "int", default=0))).text
    assert registry.register("s-value", v1) == 1
    assert registry.register("s-value", v1) == 1  # idempotent
    assert registry.register("other-value", v1) == 1  # one schema, one global id
    assert registry.register("s-value", v2) == 2
    assert registry.latest("s-value").schema_id == 2
    assert registry.latest("s-value").version == 2
    assert registry.version("s-value", 1).schema == v1
    assert registry.lookup("s-value", v1) == 1
    assert registry.get_schema(2) == v2
    assert registry.subjects() == ["other-value", "s-value"]
    # The same schema spelled differently (key order, spaces) is the same schema.
    respelled = '{ "fields": [{"type": "int", "name": "a"}], "name": "R", "type": "record" }'
    assert registry.register("s-value", respelled) == 1


def test_in_memory_registry_errors() -> None:
    registry = InMemorySchemaRegistry()
    text = AvroSchema(record(f("a", "int"))).text
    with pytest.raises(SubjectNotFoundError) as info:
        registry.latest("nope")
    assert info.value.error_code == 40401
    with pytest.raises(SchemaNotFoundError) as missing:
        registry.get_schema(99)
    assert missing.value.error_code == 40403
    registry.register("s", text)
    with pytest.raises(SchemaNotFoundError):
        registry.lookup("s", AvroSchema(record(f("z", "int"))).text)
    with pytest.raises(SchemaNotFoundError) as version:
        registry.version("s", 5)
    assert version.value.error_code == 40402
    with pytest.raises(InvalidSchemaError) as invalid:
        registry.register("s", '{"type": "nonsense"}')
    assert invalid.value.error_code == 42201
    with pytest.raises(IncompatibleSchemaError) as incompatible:
        registry.register("s", AvroSchema(record(f("a", "string"))).text)
    assert incompatible.value.error_code == 409
    assert "R.a: the reader expects string, the writer wrote int" in str(incompatible.value)
    with pytest.raises(ConfigurationError):
        InMemorySchemaRegistry(compatibility="SOMETIMES")


def test_in_memory_registry_per_subject_compatibility() -> None:
    registry = InMemorySchemaRegistry()
    registry.set_compatibility("NONE", subject="free")
    registry.register("free", AvroSchema(record(f("a", "int"))).text)
    registry.register("free", AvroSchema(record(f("a", "string"))).text)
    assert registry.compatibility("free") == "NONE"
    assert registry.compatibility("other") == "BACKWARD"
