"""Cases shared by the round trips against the official CloudEvents SDK.

One event with every optional attribute and extensions, written by the SDK in either
content mode, and one event of ours with the attributes the SDK must read back. The
transports' tests send them through a real broker; ``cloudevents`` (PyPI) must be
installed, and is imported only when these helpers run.
"""

from __future__ import annotations

import importlib
from datetime import datetime, timezone
from typing import Any

from ..event import Event, EventMetadata

__all__ = ["SDK_ATTRIBUTES", "SDK_TIME", "check_sdk_event", "our_event", "read_record", "sdk_record"]

SDK_TIME = datetime(2026, 12, 1, 3, 4, 5, 678901, tzinfo=timezone.utc)
SDK_ATTRIBUTES: dict[str, Any] = {
    "id": "sdk-1",
    "type": "com.example.order.created",
    "source": "/orders/eu",
    "time": SDK_TIME,
    "subject": "order/7",
    "dataschema": "https://schemas.example/order/1.json",
    "datacontenttype": "application/json",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "region": "eu",
    "partitionkey": "7",
}


def _sdk() -> tuple[Any, Any, Any]:
    # Imported by name: the SDK is a test dependency, absent where the core is type-checked.
    return (
        importlib.import_module("cloudevents.core.bindings.kafka"),
        importlib.import_module("cloudevents.core.formats.json"),
        importlib.import_module("cloudevents.core.v1.event"),
    )


def sdk_record(mode: str, data: Any = None, **attributes: Any) -> Any:
    """The SDK's Kafka-binding record (``headers``, ``key``, ``value``) of the sample event."""
    kafka, json_format, v1 = _sdk()
    writer = kafka.to_binary if mode == "binary" else kafka.to_structured
    event = v1.CloudEvent({**SDK_ATTRIBUTES, **attributes}, {"id": 7} if data is None else data)
    return writer(event, json_format.JSONFormat())


def read_record(mode: str, headers: dict[str, bytes], key: Any, value: bytes) -> Any:
    """The SDK's CloudEvent parsed from a record in ``mode``."""
    kafka, json_format, _ = _sdk()
    reader = kafka.from_binary if mode == "binary" else kafka.from_structured
    return reader(kafka.KafkaMessage(headers=headers, key=key, value=value), json_format.JSONFormat())


def check_sdk_event(event: Event) -> None:
    """Assert that ``event`` carries every attribute of the SDK's sample event."""
    meta = event.metadata
    assert event.payload == {"id": 7}
    assert event.key == "7"
    assert (meta.event_id, meta.event_type, meta.source, meta.occurred_at) == (
        "sdk-1",
        "com.example.order.created",
        "/orders/eu",
        SDK_TIME,
    )
    assert (meta.subject, meta.data_schema, meta.content_type) == (
        "order/7",
        "https://schemas.example/order/1.json",
        "application/json",
    )
    assert meta.extensions == {
        "traceparent": SDK_ATTRIBUTES["traceparent"],
        "region": "eu",
        "partitionkey": "7",
    }


def our_event(topic: str) -> tuple[Event, dict[str, Any]]:
    """An event of ours, and the attributes the SDK reads from it (its source is set by the bus)."""
    event = Event(
        topic=topic,
        payload={"id": 7},
        key="7",
        tenant_id="acme",
        metadata=EventMetadata(
            event_id="ours-1",
            event_type="order.created",
            occurred_at=SDK_TIME,
            subject="order/7",
            data_schema="urn:order:1",
            extensions={"region": "eu"},
        ),
    )
    expected = {
        "specversion": "1.0",
        "id": "ours-1",
        "type": "order.created",
        "time": SDK_TIME,
        "subject": "order/7",
        "dataschema": "urn:order:1",
        "datacontenttype": "application/json",
        "tenantid": "acme",
        "region": "eu",
        "partitionkey": "7",
    }
    return event, expected
