"""The codec on its own: round trips, the wire format, bad bytes, evolution, schema sources."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import struct
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from dotmac.events import Event, EventMetadata
from dotmac.events.errors import CodecError, ConfigurationError, DecodeError, EncodeError
from dotmac_events_avro import (
    CONTENT_TYPE,
    AvroCodec,
    AvroSchema,
    InMemorySchemaRegistry,
    SchemaLoadError,
    frame,
    unframe,
)

EVERYTHING: dict[str, Any] = {
    "type": "record",
    "name": "Everything",
    "namespace": "test.avro",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "small", "type": "int"},
        {"name": "flag", "type": "boolean"},
        {"name": "ratio", "type": "float"},
        {"name": "score", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
        {
            "name": "address",
            "type": {
                "type": "record",
                "name": "Address",
                "fields": [
                    {"name": "street", "type": "string"},
                    {
                        "name": "geo",
                        "type": {
                            "type": "record",
                            "name": "Geo",
                            "fields": [
                                {"name": "lat", "type": "double"},
                                {"name": "lon", "type": "double"},
                            ],
                        },
                    },
                ],
            },
        },
        {"name": "billing", "type": ["null", "Address"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Line",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {"name": "qty", "type": "int"},
                        {"name": "attrs", "type": {"type": "map", "values": ["long", "string"]}},
                    ],
                },
            },
        },
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {"name": "choice", "type": ["null", "long", "string", "Color"]},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
        {
            "name": "fixed_price",
            "type": {
                "type": "fixed",
                "name": "Money",
                "size": 8,
                "logicalType": "decimal",
                "precision": 18,
                "scale": 2,
            },
        },
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {
            "name": "maybe_at",
            "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}],
            "default": None,
        },
    ],
}


def everything_payload() -> dict[str, Any]:
    return {
        "id": 2**62,
        "small": -(2**31),
        "flag": True,
        "ratio": 0.5,
        "score": -1.25e300,
        "blob": b"\x00\xff\x10",
        "text": "Zoë 🚀 日本語",
        "color": "GREEN",
        "hash": b"\x01\x02\x03\x04",
        "address": {"street": "Rue de la Paix 1", "geo": {"lat": 48.869, "lon": 2.331}},
        "billing": {"street": "Elm St 5", "geo": {"lat": -33.9, "lon": 151.2}},
        "tags": ["a", "b", ""],
        "lines": [
            {"sku": "X-1", "qty": 3, "attrs": {"weight": 12, "origin": "FR"}},
            {"sku": "Y-2", "qty": 0, "attrs": {}},
        ],
        "counts": {"views": 10, "clicks": -1},
        "choice": "BLUE",
        "at": dt.datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=dt.timezone.utc),
        "at_us": dt.datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=dt.timezone.utc),
        "price": decimal.Decimal("-123456789.125"),
        "fixed_price": decimal.Decimal("9999999999999999.99"),
        "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "day": dt.date(1969, 12, 31),
        "clock": dt.time(23, 59, 59, 999000),
        "maybe_at": None,
    }


def event(topic: str, payload: dict[str, Any], **kwargs: Any) -> Event:
    return Event(topic=topic, payload=payload, **kwargs)


# -- round trips ------------------------------------------------------------------------------


def test_round_trip_of_every_type(registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(schemas={"things": EVERYTHING}, registry=registry)
    payload = everything_payload()
    data = codec.encode(event("things", payload))
    decoded = codec.decode(data, topic="things", headers={})
    expected = dict(payload)
    expected["choice"] = "BLUE"  # a string branch: the enum branch is never guessed on write
    assert decoded == expected
    assert isinstance(decoded["price"], decimal.Decimal)
    assert decoded["at"].tzinfo is not None
    assert isinstance(decoded["ref"], uuid.UUID)
    assert type(decoded["day"]) is dt.date


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("choice", None),
        ("choice", 42),
        ("choice", "free text"),
        ("billing", None),
        ("maybe_at", dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)),
    ],
)
def test_union_branches_round_trip(registry: InMemorySchemaRegistry, field: str, value: Any) -> None:
    codec = AvroCodec(schemas={"things": EVERYTHING}, registry=registry)
    payload = everything_payload() | {field: value}
    decoded = codec.decode(codec.encode(event("things", payload)), topic="things", headers={})
    assert decoded[field] == value


def test_missing_fields_with_defaults_are_written_as_defaults(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    codec = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    data = codec.encode(event("orders", {"id": 1, "customer": "c"}))
    assert codec.decode(data, topic="orders", headers={}) == {"id": 1, "customer": "c", "note": None}


def test_timestamps_keep_the_instant_whatever_the_zone(registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(schemas={"things": EVERYTHING}, registry=registry)
    plus_two = dt.timezone(dt.timedelta(hours=2))
    local = dt.datetime(2026, 3, 4, 7, 6, 7, 123000, tzinfo=plus_two)
    decoded = codec.decode(
        codec.encode(event("things", everything_payload() | {"at": local})), topic="things", headers={}
    )
    assert decoded["at"] == local
    assert decoded["at"].utcoffset() == dt.timedelta(0)


# -- the wire format --------------------------------------------------------------------------


def test_wire_format_is_confluent_framing(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    payload = {"id": 7, "customer": "acme", "note": "hi"}
    data = codec.encode(event("orders", payload))
    schema_id = registry.lookup("orders-value", AvroSchema(orders.v1).text)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == schema_id
    # The body is plain Avro binary: fastavro reads it with the registered schema alone.
    body = io.BytesIO(data[5:])
    assert schemaless_reader(body, parse_schema(json.loads(registry.get_schema(schema_id)))) == payload
    assert body.tell() == len(data) - 5
    # And it is byte-for-byte what fastavro writes for the same record.
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(orders.v1), payload)
    assert data[5:] == out.getvalue()
    assert unframe(data) == (schema_id, out.getvalue())
    assert frame(schema_id, out.getvalue()) == data


def test_schema_ids_above_255_use_all_four_bytes() -> None:
    assert frame(0x01020304, b"x") == b"\x00\x01\x02\x03\x04x"
    assert unframe(b"\x00\xff\xff\xff\xffbody") == (2**32 - 1, b"body")


def test_content_type() -> None:
    assert AvroCodec.content_type == CONTENT_TYPE == "application/avro"
    assert AvroCodec.name == "avro"


# -- bad bytes --------------------------------------------------------------------------------


@pytest.fixture
def order_codec(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> AvroCodec:
    return AvroCodec(schemas={"orders": orders.v1}, registry=registry)


@pytest.fixture
def good_bytes(order_codec: AvroCodec) -> bytes:
    return order_codec.encode(event("orders", {"id": 123456, "customer": "acme", "note": "long enough note"}))


@pytest.mark.parametrize("size", [0, 1, 4])
def test_shorter_than_the_header_is_a_decode_error(
    order_codec: AvroCodec, good_bytes: bytes, size: int
) -> None:
    with pytest.raises(DecodeError, match=f"truncated message: {size} bytes"):
        order_codec.decode(good_bytes[:size], topic="orders", headers={})


@pytest.mark.parametrize("cut", [1, 3, 8])
def test_truncated_body_is_a_decode_error(order_codec: AvroCodec, good_bytes: bytes, cut: int) -> None:
    with pytest.raises(DecodeError, match="not valid Avro for schema id 1 \\(com.acme.Order\\)"):
        order_codec.decode(good_bytes[:-cut], topic="orders", headers={})


def test_wrong_magic_byte_is_a_decode_error(order_codec: AvroCodec, good_bytes: bytes) -> None:
    with pytest.raises(DecodeError, match="wrong magic byte 0x01"):
        order_codec.decode(b"\x01" + good_bytes[1:], topic="orders", headers={})
    with pytest.raises(DecodeError, match="wrong magic byte 0x7b"):
        order_codec.decode(b'{"id": 1, "customer": "x"}', topic="orders", headers={})


def test_unknown_schema_id_is_a_decode_error(order_codec: AvroCodec, good_bytes: bytes) -> None:
    bad = frame(4242, good_bytes[5:])
    with pytest.raises(DecodeError, match="unknown schema id 4242"):
        order_codec.decode(bad, topic="orders", headers={})
    # Remembered for a while: a second message does not ask the registry again.
    calls: list[int] = []
    original = order_codec.registry.get_schema
    order_codec.registry.get_schema = lambda i: calls.append(i) or original(i)  # type: ignore[method-assign]
    with pytest.raises(DecodeError, match="unknown schema id 4242"):
        order_codec.decode(bad, topic="orders", headers={})
    assert calls == []


def test_trailing_bytes_are_a_decode_error(order_codec: AvroCodec, good_bytes: bytes) -> None:
    with pytest.raises(DecodeError, match="2 bytes after the Avro record"):
        order_codec.decode(good_bytes + b"\x00\x00", topic="orders", headers={})


def test_garbage_body_is_a_decode_error(order_codec: AvroCodec, good_bytes: bytes) -> None:
    # A string length pointing far past the end, then an invalid union index.
    with pytest.raises(DecodeError):
        order_codec.decode(good_bytes[:5] + b"\x02\xfe\xff\xff\xff\x0f", topic="orders", headers={})
    with pytest.raises(DecodeError):
        order_codec.decode(good_bytes[:5] + b"\x02\x02a\x08", topic="orders", headers={})


def test_invalid_utf8_is_a_decode_error(order_codec: AvroCodec, good_bytes: bytes) -> None:
    with pytest.raises(DecodeError):
        order_codec.decode(good_bytes[:5] + b"\x02\x04\xff\xfe\x00", topic="orders", headers={})


def test_decode_errors_are_codec_errors() -> None:
    assert issubclass(DecodeError, CodecError)


def test_writer_schema_that_is_not_a_record_is_a_decode_error(registry: InMemorySchemaRegistry) -> None:
    schema_id = registry.register("strings-value", '"string"')
    codec = AvroCodec(registry=registry)
    with pytest.raises(DecodeError, match="a string: an event payload is a record"):
        codec.decode(frame(schema_id, b"\x02a"), topic="strings", headers={})


# -- evolution --------------------------------------------------------------------------------


def test_newer_reader_reads_older_writer(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    producer = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    consumer = AvroCodec(schemas={"orders": orders.v2}, registry=registry)
    data = producer.encode(event("orders", {"id": 1, "customer": "acme", "note": "dropped by v2"}))
    # Added field takes its default, removed optional field is skipped.
    assert consumer.decode(data, topic="orders", headers={}) == {
        "id": 1,
        "customer": "acme",
        "currency": "EUR",
    }
    # Without a reader schema the writer's own schema is used.
    assert AvroCodec(registry=registry).decode(data, topic="orders", headers={}) == {
        "id": 1,
        "customer": "acme",
        "note": "dropped by v2",
    }


def test_older_reader_reads_newer_writer(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    registry.set_compatibility("FULL")
    producer = AvroCodec(schemas={"orders": orders.v2}, registry=registry)
    consumer = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    data = producer.encode(event("orders", {"id": 2, "customer": "b", "currency": "USD"}))
    assert consumer.decode(data, topic="orders", headers={}) == {"id": 2, "customer": "b", "note": None}


def test_incompatible_reader_is_a_decode_error_with_the_reason(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    producer = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    consumer = AvroCodec(schemas={"orders": orders.v3}, registry=registry)
    data = producer.encode(event("orders", {"id": 1, "customer": "acme"}))
    with pytest.raises(DecodeError) as info:
        consumer.decode(data, topic="orders", headers={})
    message = str(info.value)
    assert "schema id 1 (com.acme.Order)" in message
    assert "com.acme.Order.region: the reader's field has no default" in message


def test_reader_chosen_by_event_type_before_topic(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    producer = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    consumer = AvroCodec(
        schemas={"orders": orders.v3}, event_schemas={"order.created": orders.v2}, registry=registry
    )
    data = producer.encode(event("orders", {"id": 1, "customer": "acme"}))
    decoded = consumer.decode(data, topic="orders", headers={"ce_type": "order.created"})
    assert decoded["currency"] == "EUR"
    with pytest.raises(DecodeError):
        consumer.decode(data, topic="orders", headers={"ce_type": "something.else"})


def test_a_new_writer_version_gets_a_new_id(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    v1 = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    v2 = AvroCodec(schemas={"orders": orders.v2}, registry=registry)
    a = v1.encode(event("orders", {"id": 1, "customer": "a"}))
    b = v2.encode(event("orders", {"id": 1, "customer": "a"}))
    assert unframe(a)[0] != unframe(b)[0]
    assert registry.versions("orders-value") == [1, 2]


# -- where schemas come from ------------------------------------------------------------------


def test_schema_from_avsc_file_dict_and_text(
    orders: SimpleNamespace, tmp_path: Path, registry: InMemorySchemaRegistry
) -> None:
    path = tmp_path / "order.avsc"
    path.write_text(json.dumps(orders.v1, indent=2), encoding="utf-8")
    codecs = [
        AvroCodec(schemas={"orders": path}, registry=registry),
        AvroCodec(schemas={"orders": str(path)}, registry=registry),
        AvroCodec(schemas={"orders": json.dumps(orders.v1)}, registry=registry),
        AvroCodec(schemas={"orders": orders.v1}, registry=registry),
    ]
    encoded = {c.encode(event("orders", {"id": 1, "customer": "x"})) for c in codecs}
    assert len(encoded) == 1  # one schema, one id, one byte string
    assert registry.versions("orders-value") == [1]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("does/not/exist.avsc", "cannot read schema file 'does/not/exist.avsc'"),
        ('{"type": "record"', "is not JSON"),
        (
            {"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]},
            "not a valid Avro schema",
        ),
        ('"string"', "is a string, not a record"),
        (42, "a schema is a dict, a list, JSON text or an .avsc path, not int"),
    ],
)
def test_bad_schema_sources_fail_at_construction(source: Any, message: str) -> None:
    with pytest.raises(SchemaLoadError, match=message) as info:
        AvroCodec(schemas={"orders": source}, registry="memory")
    assert isinstance(info.value, ConfigurationError)


def test_schema_dict_is_copied(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    schema = json.loads(json.dumps(orders.v1))
    codec = AvroCodec(schemas={"orders": schema}, registry=registry)
    schema["fields"].append({"name": "late", "type": "string"})
    assert codec.decode(
        codec.encode(event("orders", {"id": 1, "customer": "x"})), topic="orders", headers={}
    ) == {"id": 1, "customer": "x", "note": None}


def test_topic_patterns(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(schemas={"orders.created": orders.v2, "orders.*": orders.v1}, registry=registry)
    assert codec.schema_for("orders.created") == AvroSchema(orders.v2)
    assert codec.schema_for("orders.eu.cancelled") == AvroSchema(orders.v1)
    assert codec.schema_for("invoices") is None
    codec.encode(event("orders.eu", {"id": 1, "customer": "x"}))
    assert registry.subjects() == ["orders.eu-value"]


def test_schema_from_the_registry_latest_version(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    registry.register("orders-value", json.dumps(orders.v1))
    codec = AvroCodec(registry=registry)
    data = codec.encode(event("orders", {"id": 5, "customer": "z"}))
    assert codec.decode(data, topic="orders", headers={}) == {"id": 5, "customer": "z", "note": None}
    # The latest version is cached: a newer one is not seen until the cache expires.
    registry.register("orders-value", json.dumps(orders.v2))
    assert unframe(codec.encode(event("orders", {"id": 5, "customer": "z"})))[0] == 1


def test_latest_ttl_picks_up_new_versions(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dotmac_events_avro.codec as codec_module

    now = [1000.0]
    monkeypatch.setattr(codec_module.time, "monotonic", lambda: now[0])
    registry.register("orders-value", json.dumps(orders.v1))
    codec = AvroCodec(registry=registry, latest_ttl=60)
    assert unframe(codec.encode(event("orders", {"id": 1, "customer": "a"})))[0] == 1
    registry.register("orders-value", json.dumps(orders.v2))
    now[0] += 59
    assert unframe(codec.encode(event("orders", {"id": 1, "customer": "a"})))[0] == 1
    now[0] += 2
    assert unframe(codec.encode(event("orders", {"id": 1, "customer": "a"})))[0] == 2


def test_no_schema_anywhere_is_an_encode_error(registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(registry=registry)
    with pytest.raises(
        EncodeError, match="no Avro schema for topic 'orders'.*subject 'orders-value' not found"
    ):
        codec.encode(event("orders", {"id": 1}))


def test_without_auto_register_the_schema_must_be_registered(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    codec = AvroCodec(schemas={"orders": orders.v1}, registry=registry, auto_register=False)
    with pytest.raises(EncodeError, match="subject 'orders-value' not found"):
        codec.encode(event("orders", {"id": 1, "customer": "a"}))
    assert registry.subjects() == []
    registry.register("orders-value", AvroSchema(orders.v1).text)
    assert unframe(codec.encode(event("orders", {"id": 1, "customer": "a"})))[0] == 1


def test_incompatible_new_version_is_an_encode_error(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    AvroCodec(schemas={"orders": orders.v1}, registry=registry).encode(
        event("orders", {"id": 1, "customer": "a"})
    )
    codec = AvroCodec(schemas={"orders": orders.v3}, registry=registry)
    with pytest.raises(EncodeError, match="incompatible \\(BACKWARD\\).*region") as info:
        codec.encode(event("orders", {"id": 1, "customer": "a", "region": "eu"}))
    assert type(info.value.__cause__).__name__ == "IncompatibleSchemaError"


# -- subject strategies -----------------------------------------------------------------------


def test_record_name_strategy(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(schemas={"orders.*": orders.v1}, registry=registry, subject_strategy="record_name")
    codec.encode(event("orders.a", {"id": 1, "customer": "a"}))
    codec.encode(event("orders.b", {"id": 1, "customer": "a"}))
    assert registry.subjects() == ["com.acme.Order"]


def test_record_name_strategy_with_registry_schema_uses_the_event_type(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    registry.register("com.acme.Order", json.dumps(orders.v1))
    codec = AvroCodec(registry=registry, subject_strategy="RecordNameStrategy")
    meta = EventMetadata(event_type="com.acme.Order")
    data = codec.encode(event("anything", {"id": 1, "customer": "a"}, metadata=meta))
    assert unframe(data)[0] == 1
    with pytest.raises(EncodeError, match="needs a record name"):
        codec.encode(event("anything", {"id": 1, "customer": "a"}))


def test_topic_record_name_strategy(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(schemas={"orders": orders.v1}, registry=registry, subject_strategy="topic-record-name")
    codec.encode(event("orders", {"id": 1, "customer": "a"}))
    assert registry.subjects() == ["orders-com.acme.Order"]


def test_custom_strategy(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(
        schemas={"orders": orders.v1}, registry=registry, subject_strategy=lambda topic, name: f"x.{topic}"
    )
    codec.encode(event("orders", {"id": 1, "customer": "a"}))
    assert registry.subjects() == ["x.orders"]


def test_event_schemas_pick_the_writer_schema(
    orders: SimpleNamespace, registry: InMemorySchemaRegistry
) -> None:
    other = {"type": "record", "name": "Refund", "fields": [{"name": "amount", "type": "long"}]}
    codec = AvroCodec(
        schemas={"money": orders.v1},
        event_schemas={"refund": other},
        registry=registry,
        subject_strategy="topic_record_name",
    )
    a = codec.encode(event("money", {"id": 1, "customer": "a"}))
    b = codec.encode(event("money", {"amount": 5}, metadata=EventMetadata(event_type="refund")))
    assert unframe(a)[0] != unframe(b)[0]
    assert registry.subjects() == ["money-Refund", "money-com.acme.Order"]
    assert codec.decode(b, topic="money", headers={"ce_type": "refund"}) == {"amount": 5}


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"subject_strategy": "nope"}, "unknown subject strategy 'nope'"),
        ({"auto_register": "yes"}, "auto_register must be true or false"),
        ({"latest_ttl": 0}, "latest_ttl must be > 0"),
        ({"registry": 3}, "registry must be a SchemaRegistry"),
        ({"registry": "ftp://x"}, "must be http\\(s\\)://"),
        ({"registry": {"timeout": 1}}, "need a 'url'"),
        ({"registry": {"url": "http://x", "bogus": 1}}, "bad schema registry options"),
        ({"schemas": ["x"]}, "must be a mapping"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AvroCodec(**options)


def test_registry_from_options() -> None:
    from dotmac_events_avro import HttpSchemaRegistry, default_registry

    assert AvroCodec().registry is default_registry()
    assert AvroCodec(registry="default").registry is default_registry()
    assert isinstance(AvroCodec(registry="memory").registry, InMemorySchemaRegistry)
    http = AvroCodec(registry={"url": "http://127.0.0.1:1", "timeout": 2}).registry
    assert isinstance(http, HttpSchemaRegistry)
    assert http.timeout == 2


def test_prepare_resolves_ids_ahead(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    import asyncio

    codec = AvroCodec(schemas={"orders": orders.v1, "orders.*": orders.v2}, registry=registry)
    asyncio.run(codec.prepare(["orders.eu"]))
    assert registry.subjects() == ["orders-value", "orders.eu-value"]


def test_repr_names_topics_not_schemas(orders: SimpleNamespace, registry: InMemorySchemaRegistry) -> None:
    codec = AvroCodec(schemas={"orders": orders.v1}, event_schemas={"t": orders.v2}, registry=registry)
    assert repr(codec) == f"<AvroCodec registry={registry!r} topics=['orders'] event_types=['t']>"


def test_a_union_of_records_carries_several_event_shapes(registry: InMemorySchemaRegistry) -> None:
    shapes = [
        {"type": "record", "name": "Created", "fields": [{"name": "id", "type": "long"}]},
        {
            "type": "record",
            "name": "Renamed",
            "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
        },
    ]
    codec = AvroCodec(schemas={"things": shapes}, registry=registry)
    for payload in ({"id": 1}, {"id": 2, "name": "two"}):
        assert codec.decode(codec.encode(event("things", payload)), topic="things", headers={}) == payload
    with pytest.raises(EncodeError):
        codec.encode(event("things", {"name": "no id"}))
    with pytest.raises(SchemaLoadError, match="is a union, not a record or a union of records"):
        AvroCodec(schemas={"things": ["null", shapes[0]]}, registry=registry)
