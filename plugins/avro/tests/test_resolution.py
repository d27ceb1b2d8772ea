"""Schema evolution when reading data, cross-checked against Apache Avro's own resolution.

For each pair of schemas (writer, reader) and each value, the codec's decode and the
``avro`` package's ``DatumReader(writer, reader)`` must agree: both read the same
value, or both refuse it. Enums fail only on a symbol the reader lacks (its default
is used when it has one); a writer union fails only for a branch the reader lacks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
from typing import Any

import pytest

from dotmac.events import DecodeError, Event
from dotmac_events_avro import AvroCodec, InMemorySchemaRegistry

avro_io = pytest.importorskip("avro.io")
avro_schema = pytest.importorskip("avro.schema")

UNREADABLE = object()
# Where the Python ``avro`` package (1.12) does not apply a rule of the specification
# that Apache Avro for Java, and so Confluent's deserializer, does: a reader enum's
# default for an unknown symbol, and a writer union read by a non-union reader. The
# codec follows the specification; the test notices if the package starts to as well.
APACHE_PYTHON_DIFFERS = {"enum-reader-default-1", "union-to-plain-0"}


def record(field_type: Any, *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": "R",
        "namespace": "t",
        "fields": [{"name": "v", "type": field_type}, *extra],
    }


COLOR_V2 = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}
COLOR_V1 = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
COLOR_V1_DEFAULT = {**COLOR_V1, "default": "RED"}
UTC = dt.timezone.utc

# (case, writer schema, reader schema, [(written value, what the reader sees)])
CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[tuple[Any, Any]]]] = [
    (
        "enum-symbol-added",
        record(COLOR_V2),
        record(COLOR_V1),
        [("RED", "RED"), ("GREEN", "GREEN"), ("BLUE", UNREADABLE)],
    ),
    (
        "enum-reader-default",
        record(COLOR_V2),
        record(COLOR_V1_DEFAULT),
        [("GREEN", "GREEN"), ("BLUE", "RED")],
    ),
    (
        "union-branch-removed",
        record(["null", "string", "long"]),
        record(["null", "string"]),
        [(None, None), ("x", "x"), (5, UNREADABLE)],
    ),
    ("union-to-plain", record(["null", "long"]), record("long"), [(7, 7), (None, UNREADABLE)]),
    ("plain-to-union", record("long"), record(["null", "long"]), [(7, 7)]),
    ("promotion", record("int"), record("double"), [(3, 3.0)]),
    (
        "default-added",
        record("long"),
        record("long", {"name": "currency", "type": "string", "default": "EUR"}),
        [(1, 1)],
    ),
    (
        "timestamp-millis",
        record({"type": "long", "logicalType": "timestamp-millis"}),
        record({"type": "long", "logicalType": "timestamp-millis"}),
        [(dt.datetime(2026, 12, 1, 3, 4, 5, 678000, tzinfo=UTC),) * 2],
    ),
    (
        "date",
        record({"type": "int", "logicalType": "date"}),
        record({"type": "int", "logicalType": "date"}),
        [(dt.date(2026, 12, 1),) * 2],
    ),
    (
        "decimal",
        record({"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}),
        record({"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}),
        [(decimal.Decimal("12.34"),) * 2],
    ),
]
PARAMS = [
    pytest.param(writer, reader, written, expected, f"{name}-{index}", id=f"{name}-{index}")
    for name, writer, reader, values in CASES
    for index, (written, expected) in enumerate(values)
]


def apache_read(writer: dict[str, Any], reader: dict[str, Any], body: bytes) -> Any:
    datum_reader = avro_io.DatumReader(
        avro_schema.parse(json.dumps(writer)), avro_schema.parse(json.dumps(reader))
    )
    try:
        return datum_reader.read(avro_io.BinaryDecoder(io.BytesIO(body)))["v"]
    except Exception:
        return UNREADABLE


@pytest.mark.parametrize(("writer", "reader", "written", "expected", "case"), PARAMS)
def test_the_codec_resolves_as_apache_avro_does(
    writer: dict[str, Any], reader: dict[str, Any], written: Any, expected: Any, case: str
) -> None:
    registry = InMemorySchemaRegistry()
    produced = AvroCodec(schemas={"t": writer}, registry=registry).encode(
        Event(topic="t", payload={"v": written})
    )
    consumer = AvroCodec(schemas={"t": reader}, registry=registry)
    try:
        ours: Any = consumer.decode(produced, topic="t", headers={})["v"]
    except DecodeError:
        ours = UNREADABLE
    theirs = apache_read(writer, reader, produced[5:])
    assert ours == expected
    if case in APACHE_PYTHON_DIFFERS:
        assert theirs is UNREADABLE
    else:
        assert ours == theirs


def test_an_unknown_symbol_names_itself() -> None:
    registry = InMemorySchemaRegistry()
    body = AvroCodec(schemas={"t": record(COLOR_V2)}, registry=registry).encode(
        Event(topic="t", payload={"v": "BLUE"})
    )
    with pytest.raises(DecodeError, match="BLUE"):
        AvroCodec(schemas={"t": record(COLOR_V1)}, registry=registry).decode(body, topic="t", headers={})
