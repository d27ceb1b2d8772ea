"""Payloads that do not fit: the error names the field and the expected type, nothing is written."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest

from dotmac.events import Event
from dotmac.events.errors import CodecError, EncodeError, SchemaValidationError
from dotmac_events_avro import AvroCodec, AvroValidationError, InMemorySchemaRegistry

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Shipment",
    "namespace": "acme",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "count", "type": "int"},
        {"name": "ok", "type": "boolean"},
        {"name": "weight", "type": "float"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
        {"name": "code", "type": {"type": "fixed", "name": "Code", "size": 2}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "SENT"]}},
        {"name": "sent_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {
            "name": "items",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Item",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {"name": "qty", "type": "int"},
                        {"name": "meta", "type": {"type": "map", "values": "long"}, "default": {}},
                    ],
                },
            },
        },
        {"name": "next", "type": ["null", "Item"], "default": None},
        {"name": "label", "type": ["null", "string", "long"], "default": None},
    ],
}


def good() -> dict[str, Any]:
    return {
        "id": 1,
        "count": 2,
        "ok": False,
        "weight": 1.5,
        "price": decimal.Decimal("1234.50"),
        "code": b"ab",
        "status": "NEW",
        "sent_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 1, 1),
        "ref": str(uuid.uuid4()),
        "items": [{"sku": "a", "qty": 1, "meta": {"x": 1}}, {"sku": "b", "qty": 2}],
        "next": None,
    }


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec(schemas={"ship": SCHEMA}, registry=InMemorySchemaRegistry())


def encode_error(codec: AvroCodec, **changes: Any) -> AvroValidationError:
    payload = good()
    for key, value in changes.items():
        if value is _DELETE:
            del payload[key]
        else:
            payload[key] = value
    with pytest.raises(AvroValidationError) as info:
        codec.encode(Event(topic="ship", payload=payload))
    return info.value


_DELETE = object()


def test_the_good_payload_encodes(codec: AvroCodec) -> None:
    assert codec.encode(Event(topic="ship", payload=good()))[0] == 0


@pytest.mark.parametrize(
    ("changes", "field", "expected", "actual"),
    [
        ({"id": 1.5}, "payload['id']", "long", "float"),  # fastavro alone would write 1
        ({"id": True}, "payload['id']", "long", "bool"),  # ... and 1 here
        ({"id": "7"}, "payload['id']", "long", "str"),
        ({"id": 2**63}, "payload['id']", "long", "an int outside the 64-bit range"),
        ({"count": 2**31}, "payload['count']", "int", "an int outside the 32-bit range"),
        ({"ok": 1}, "payload['ok']", "boolean", "int"),
        ({"weight": "1.5"}, "payload['weight']", "float", "str"),
        ({"weight": 1e39}, "payload['weight']", "float", "a number outside the 32-bit float range"),
        ({"price": 12.5}, "payload['price']", "decimal(6,2) (a decimal.Decimal)", "float"),
        (
            {"price": decimal.Decimal("1.234")},
            "payload['price']",
            "decimal(6,2)",
            "a Decimal with more than 2 fractional digits",
        ),
        (
            {"price": decimal.Decimal("12345.6")},
            "payload['price']",
            "decimal(6,2)",
            "a Decimal with more than 6 significant digits",
        ),
        (
            {"price": decimal.Decimal("NaN")},
            "payload['price']",
            "decimal(6,2)",
            "a Decimal that is not finite",
        ),
        ({"code": b"abc"}, "payload['code']", "fixed acme.Code[2]", "3 bytes"),
        ({"code": "ab"}, "payload['code']", "fixed acme.Code[2]", "str"),
        ({"status": "LOST"}, "payload['status']", "enum acme.Status", "a str that is not one of its symbols"),
        (
            {"sent_at": dt.datetime(2026, 1, 1)},
            "payload['sent_at']",
            "timestamp-millis (a timezone-aware datetime)",
            "naive datetime",
        ),
        ({"sent_at": "2026-01-01"}, "payload['sent_at']", "timestamp-millis (a datetime)", "str"),
        ({"day": dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)}, "payload['day']", "date", "datetime"),
        ({"ref": "not-a-uuid"}, "payload['ref']", "uuid", "a str that is not a UUID"),
        ({"items": {"sku": "a"}}, "payload['items']", "array<acme.Item>", "dict"),
        (
            {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "2"}]},
            "payload['items'][1]['qty']",
            "int",
            "str",
        ),
        (
            {"items": [{"sku": "a", "qty": 1, "meta": {"x": "1"}}]},
            "payload['items'][0]['meta']['x']",
            "long",
            "str",
        ),
        (
            {"items": [{"sku": "a", "qty": 1, "meta": {1: 1}}]},
            "payload['items'][0]['meta']",
            "map<long>",
            "a int key (map keys are strings)",
        ),
        ({"items": [{"qty": 1}]}, "payload['items'][0]['sku']", "string", "nothing"),
        ({"next": {"sku": "a", "qty": None}}, "payload['next']['qty']", "int", "None"),
        ({"next": "x"}, "payload['next']", "null | acme.Item", "str"),
        ({"label": 1.5}, "payload['label']", "null | string | long", "float"),
        ({"id": _DELETE}, "payload['id']", "long", "nothing"),
        ({"surprise": 1}, "payload['surprise']", "no such field", "int"),
    ],
)
def test_mismatch_names_field_and_expected_type(
    codec: AvroCodec, changes: dict[str, Any], field: str, expected: str, actual: str
) -> None:
    error = encode_error(codec, **changes)
    assert error.field == field
    assert error.expected == expected
    assert error.actual == actual
    assert error.schema_name == "acme.Shipment"
    assert error.topic == "ship"
    assert str(error).startswith(f"{field}: ")
    assert "(schema acme.Shipment, topic 'ship')" in str(error)


def test_error_is_an_encode_error_and_a_schema_validation_error(codec: AvroCodec) -> None:
    error = encode_error(codec, id="x")
    assert isinstance(error, EncodeError)
    assert isinstance(error, CodecError)
    assert isinstance(error, SchemaValidationError)


def test_messages_never_quote_values(codec: AvroCodec) -> None:
    secret = "s3cr3t-card-number"
    for changes in ({"id": secret}, {"status": secret}, {"ref": secret}, {secret: 1}, {"label": [secret]}):
        error = encode_error(codec, **changes)
        if secret in changes:  # an unknown key is a field name, which is named on purpose
            continue
        assert secret not in str(error)


def test_missing_field_message(codec: AvroCodec) -> None:
    error = encode_error(codec, id=_DELETE)
    assert str(error).startswith("payload['id']: missing field of acme.Shipment (expected long)")


def test_extra_keys_are_allowed_when_not_strict() -> None:
    codec = AvroCodec(schemas={"ship": SCHEMA}, registry=InMemorySchemaRegistry(), strict=False)
    data = codec.encode(Event(topic="ship", payload={**good(), "surprise": 1}))
    assert "surprise" not in codec.decode(data, topic="ship", headers={})


def test_tuples_are_arrays_not_union_type_tags() -> None:
    schema = {
        "type": "record",
        "name": "T",
        "fields": [{"name": "pair", "type": ["null", {"type": "array", "items": "string"}]}],
    }
    codec = AvroCodec(schemas={"t": schema}, registry=InMemorySchemaRegistry())
    data = codec.encode(Event(topic="t", payload={"pair": ("string", "x")}))
    assert codec.decode(data, topic="t", headers={}) == {"pair": ["string", "x"]}


def test_recursive_schema() -> None:
    schema = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "value", "type": "int"},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ],
    }
    codec = AvroCodec(schemas={"list": schema}, registry=InMemorySchemaRegistry())
    chain = {"value": 1, "next": {"value": 2, "next": {"value": 3, "next": None}}}
    assert codec.decode(codec.encode(Event(topic="list", payload=chain)), topic="list", headers={}) == chain
    broken = {"value": 1, "next": {"value": 2, "next": {"value": "3"}}}
    with pytest.raises(AvroValidationError) as info:
        codec.encode(Event(topic="list", payload=broken))
    assert info.value.field == "payload['next']['next']['value']"


def test_union_of_two_records_picks_the_one_that_fits() -> None:
    schema = {
        "type": "record",
        "name": "Wrapper",
        "fields": [
            {
                "name": "body",
                "type": [
                    {"type": "record", "name": "Cat", "fields": [{"name": "meow", "type": "string"}]},
                    {"type": "record", "name": "Dog", "fields": [{"name": "woof", "type": "long"}]},
                ],
            }
        ],
    }
    codec = AvroCodec(schemas={"pets": schema}, registry=InMemorySchemaRegistry())
    for body in ({"meow": "hi"}, {"woof": 3}):
        data = codec.encode(Event(topic="pets", payload={"body": body}))
        assert codec.decode(data, topic="pets", headers={}) == {"body": body}
    with pytest.raises(AvroValidationError) as info:
        codec.encode(Event(topic="pets", payload={"body": {"woof": "loud"}}))
    assert info.value.expected == "Cat | Dog"
    assert info.value.actual == "a dict that fits none of its branches"


def test_int_accepted_for_float_and_double() -> None:
    schema = {
        "type": "record",
        "name": "N",
        "fields": [{"name": "f", "type": "float"}, {"name": "d", "type": "double"}],
    }
    codec = AvroCodec(schemas={"n": schema}, registry=InMemorySchemaRegistry())
    data = codec.encode(Event(topic="n", payload={"f": 3, "d": -(2**53)}))
    assert codec.decode(data, topic="n", headers={}) == {"f": 3.0, "d": float(-(2**53))}
