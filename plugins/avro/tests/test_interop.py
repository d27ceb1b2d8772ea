"""Interoperability with independent implementations.

- Confluent's ``AvroSerializer``/``AvroDeserializer`` (confluent-kafka) sharing one
  in-memory registry client with the codec: each side reads what the other wrote.
- Apache Avro's pure-Python reader decodes the body of what the codec wrote.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError as ConfluentRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from dotmac.events import Event
from dotmac_events_avro import (
    AvroCodec,
    RegisteredSchema,
    SchemaNotFoundError,
    SchemaRegistry,
    SchemaRegistryError,
    SubjectNotFoundError,
    unframe,
)

ORDER: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "com.acme.shop",
    "fields": [
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ship_on", "type": {"type": "int", "logicalType": "date"}},
        {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]}},
        {
            "name": "customer",
            "type": {
                "type": "record",
                "name": "Customer",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "email", "type": ["null", "string"], "default": None},
                ],
            },
        },
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
                        {"name": "unit_price", "type": "double"},
                    ],
                },
            },
        },
        {"name": "attributes", "type": {"type": "map", "values": "string"}},
        {"name": "gift", "type": ["null", "boolean", "string"], "default": None},
    ],
}


def order_payload() -> dict[str, Any]:
    return {
        "id": uuid.UUID("6f1c2a8e-9b7d-4f3e-8a21-0c5d4b3a2f10"),
        "placed_at": dt.datetime(2026, 5, 17, 9, 30, 15, 250000, tzinfo=dt.timezone.utc),
        "ship_on": dt.date(2026, 5, 20),
        "total": decimal.Decimal("1234.56"),
        "status": "PAID",
        "customer": {"name": "Zoë Ærø", "email": "zoe@example.org"},
        "lines": [
            {"sku": "A-1", "qty": 2, "unit_price": 9.99},
            {"sku": "B-22", "qty": 1, "unit_price": 1214.58},
        ],
        "attributes": {"channel": "web", "coupon": "SPRING"},
        "gift": True,
    }


class ConfluentClientRegistry(SchemaRegistry):
    """The codec's registry interface over a confluent-kafka ``SchemaRegistryClient``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def register(self, subject: str, schema: str) -> int:
        return int(self.client.register_schema(subject, Schema(schema, "AVRO")))

    def lookup(self, subject: str, schema: str) -> int:
        try:
            return int(self.client.lookup_schema(subject, Schema(schema, "AVRO")).schema_id)
        except ConfluentRegistryError as exc:
            raise SchemaNotFoundError(str(exc), error_code=exc.error_code) from exc

    def get_schema(self, schema_id: int) -> str:
        try:
            return str(self.client.get_schema(schema_id).schema_str)
        except ConfluentRegistryError as exc:
            raise SchemaNotFoundError(str(exc), error_code=exc.error_code) from exc

    def latest(self, subject: str) -> RegisteredSchema:
        try:
            found = self.client.get_latest_version(subject)
        except ConfluentRegistryError as exc:
            if exc.error_code == 40401:
                raise SubjectNotFoundError(str(exc), error_code=40401) from exc
            raise SchemaRegistryError(str(exc), error_code=exc.error_code) from exc
        return RegisteredSchema(
            subject, int(found.version), int(found.schema_id), str(found.schema.schema_str)
        )


@pytest.fixture
def client() -> Any:
    return SchemaRegistryClient.new_client({"url": "mock://"})


def ctx(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def test_confluent_deserializer_reads_what_the_codec_wrote(client: Any) -> None:
    codec = AvroCodec(schemas={"orders": ORDER}, registry=ConfluentClientRegistry(client))
    payload = order_payload()
    data = codec.encode(Event(topic="orders", payload=payload))
    decoded = AvroDeserializer(client)(data, ctx("orders"))
    assert decoded == payload
    # The codec registered under Confluent's default subject name (TopicNameStrategy).
    assert client.get_latest_version("orders-value").schema_id == unframe(data)[0]


def test_codec_reads_what_the_confluent_serializer_wrote(client: Any) -> None:
    serializer = AvroSerializer(client, json.dumps(ORDER))
    payload = order_payload()
    data = serializer(payload, ctx("orders"))
    assert data[0] == 0
    codec = AvroCodec(registry=ConfluentClientRegistry(client))
    assert codec.decode(data, topic="orders", headers={}) == payload


def test_both_write_the_same_avro_body(client: Any) -> None:
    payload = order_payload()
    ours = AvroCodec(schemas={"orders": ORDER}, registry=ConfluentClientRegistry(client)).encode(
        Event(topic="orders", payload=payload)
    )
    theirs = AvroSerializer(client, json.dumps(ORDER))(payload, ctx("orders"))
    assert unframe(ours)[1] == unframe(theirs)[1]


def test_codec_with_newer_reader_reads_confluent_written_older_data(
    client: Any, orders: SimpleNamespace
) -> None:
    serializer = AvroSerializer(client, json.dumps(orders.v1))
    data = serializer({"id": 3, "customer": "acme", "note": "n"}, ctx("orders"))
    codec = AvroCodec(schemas={"orders": orders.v2}, registry=ConfluentClientRegistry(client))
    assert codec.decode(data, topic="orders", headers={}) == {"id": 3, "customer": "acme", "currency": "EUR"}


def test_confluent_reader_schema_reads_codec_written_older_data(client: Any, orders: SimpleNamespace) -> None:
    codec = AvroCodec(schemas={"orders": orders.v1}, registry=ConfluentClientRegistry(client))
    data = codec.encode(Event(topic="orders", payload={"id": 4, "customer": "b"}))
    reader = AvroDeserializer(client, schema_str=json.dumps(orders.v2))
    assert reader(data, ctx("orders")) == {"id": 4, "customer": "b", "currency": "EUR"}


def test_apache_avro_reads_the_codec_body() -> None:
    import avro.io
    import avro.schema

    from dotmac_events_avro import InMemorySchemaRegistry

    registry = InMemorySchemaRegistry()
    codec = AvroCodec(schemas={"orders": ORDER}, registry=registry)
    payload = order_payload()
    schema_id, body = unframe(codec.encode(Event(topic="orders", payload=payload)))
    reader = avro.io.DatumReader(avro.schema.parse(registry.get_schema(schema_id)))
    decoded = reader.read(avro.io.BinaryDecoder(io.BytesIO(body)))
    expected = dict(payload)
    expected["id"] = str(payload["id"])  # Apache Avro reads the uuid logical type as text
    assert decoded == expected
