"""The AsyncAPI 3.0 document, validated against the schema the npm package
``@asyncapi/specs`` ships (installed with the machine's npm, never copied here)."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dotmac.events.app.serve import load_app
from dotmac.events.cli import main
from dotmac_events_ops.asyncapi import asyncapi_document

HERE = Path(__file__).parent
SPECS_VERSION = "6"  # @asyncapi/specs major version that ships the 3.0.0 schema


@pytest.fixture(scope="session")
def asyncapi_validator(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], list[str]]:
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI"):
            pytest.fail("npm is not installed (the AsyncAPI test installs @asyncapi/specs with it)")
        pytest.skip("npm is not installed")
    import jsonschema

    where = tmp_path_factory.mktemp("asyncapi-specs")
    subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            "--prefix",
            str(where),
            f"@asyncapi/specs@{SPECS_VERSION}",
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    schema = json.loads((where / "node_modules/@asyncapi/specs/schemas/3.0.0.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)

    def errors(document: dict[str, Any]) -> list[str]:
        return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]

    return errors


@pytest.fixture
def app() -> Any:
    return load_app("ops_sample_app:app", str(HERE))


def test_document_is_valid_asyncapi_3(
    app: Any, asyncapi_validator: Callable[[dict[str, Any]], list[str]]
) -> None:
    document = asyncapi_document(app, url="redis://app:s3cret@redis.internal:6380/2?key_prefix=x")
    assert asyncapi_validator(document) == []
    # The validator does reject a broken document (so the check above means something).
    broken = copy.deepcopy(document)
    next(iter(broken["operations"].values()))["action"] = "consume"
    assert asyncapi_validator(broken) != []

    assert document["asyncapi"] == "3.0.0"
    assert document["servers"] == {
        "default": {"host": "redis.internal:6380", "protocol": "redis", "pathname": "/2"}
    }
    assert "s3cret" not in json.dumps(document)
    addresses = sorted(c["address"] for c in document["channels"].values())
    assert addresses == [
        "audit.raw",
        "invoices.issued",
        "orders.created",
        "orders.delivered",
        "orders.refunded",
        "orders.shipped",
    ]
    actions = sorted(
        (op["action"], op["channel"]["$ref"].rsplit("/", 1)[1]) for op in document["operations"].values()
    )
    assert ("send", "invoices.issued") in actions and ("receive", "orders.created") in actions
    assert len(actions) == 6  # a receive per subscribed topic, a send for the publisher


def test_payload_schemas_follow_the_annotations(app: Any) -> None:
    document = asyncapi_document(app)
    messages = document["components"]["messages"]
    order = messages["orders.created.message"]["payload"]
    assert order["required"] == ["id", "total_cents", "lines", "placed_at"]
    assert order["properties"]["id"] == {"type": "integer"}
    assert order["properties"]["placed_at"] == {"type": "string", "format": "date-time"}
    assert order["properties"]["lines"]["items"]["properties"]["quantity"] == {"type": "integer"}
    assert order["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    refund = messages["orders.refunded.message"]["payload"]
    assert refund["properties"]["reason"]["type"] == "string" and refund["required"] == ["order", "reason"]
    shipped = messages["orders.shipped.message"]["payload"]
    assert shipped["properties"]["carrier"]["type"] == "string"
    invoice = messages["invoices.issued.message"]["payload"]
    assert invoice["properties"]["customer"] == {"$ref": "#/components/schemas/Customer"}
    assert document["components"]["schemas"]["Customer"]["properties"]["name"]["type"] == "string"
    assert messages["audit.raw.message"]["payload"] == {"type": "object"}
    headers = messages["orders.created.message"]["headers"]
    assert {"ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion"} <= set(headers["required"])


def test_command_prints_json_and_yaml(asyncapi_validator: Callable[[dict[str, Any]], list[str]]) -> None:
    out = io.StringIO()
    assert main(["asyncapi", "ops_sample_app:app", "--app-dir", str(HERE)], out) == 0
    as_json = json.loads(out.getvalue())
    assert asyncapi_validator(as_json) == []
    out = io.StringIO()
    assert main(["asyncapi", "ops_sample_app:app", "--app-dir", str(HERE), "--format", "yaml"], out) == 0
    assert yaml.safe_load(out.getvalue()) == as_json


# -- Avro-encoded topics ------------------------------------------------------------------

ORDER_AVRO: dict[str, Any] = {
    "type": "record",
    "name": "OrderCreated",
    "namespace": "shop",
    "fields": [{"name": "id", "type": "long"}, {"name": "total_cents", "type": "long"}],
}


def _avro_app(**bus_options: Any) -> Any:
    from dotmac.events.app import App

    app = App("memory://", name="avro-billing", bus_options=bus_options)

    @app.subscriber("orders.created", group="billing")
    @app.publisher("invoices.issued")
    async def bill(order: dict[str, Any]) -> dict[str, Any]:
        return {"order": order["id"]}

    @app.subscriber("audit.raw", group="audit")
    async def audit(event: Any) -> None:
        return None

    return app


async def _written_content_type(app: Any, topic: str, payload: dict[str, Any]) -> str:
    """The content-type header the app's bus writes on ``topic`` (read back from memory)."""
    from dotmac.events import Event, create_bus

    async with create_bus("memory://", **app.bus_options) as bus:
        await bus.publish(Event(topic=topic, payload=payload))
        (message,) = await bus.transport.read(topic)
    return message.headers["content-type"]


async def test_avro_topics_carry_their_avro_schema(
    asyncapi_validator: Callable[[dict[str, Any]], list[str]], tmp_path: Path
) -> None:
    from dotmac_events_avro import AvroCodec

    avsc = tmp_path / "order.avsc"
    avsc.write_text(json.dumps(ORDER_AVRO))
    # The bus's codec is Avro (schema from an .avsc file); audit.raw stays JSON.
    app = _avro_app(
        codec="avro",
        codec_options={"schemas": {"orders.*": str(avsc)}, "registry": "memory"},
        topic_codecs={"audit.raw": "json"},
    )
    document = asyncapi_document(app)
    assert asyncapi_validator(document) == []
    messages = document["components"]["messages"]
    order = messages["orders.created.message"]
    assert order["contentType"] == "application/avro"
    assert order["payload"] == {
        "schemaFormat": "application/vnd.apache.avro+json;version=1.9.0",
        "schema": ORDER_AVRO,
    }
    assert messages["audit.raw.message"]["contentType"] == "application/json"
    assert messages["audit.raw.message"]["payload"] == {"type": "object"}
    assert document["defaultContentType"] == "application/avro"
    # invoices.issued is Avro too, but no schema is configured for it and the
    # in-process registry is not addressable: the Python type describes it.
    assert messages["invoices.issued.message"]["contentType"] == "application/avro"
    assert messages["invoices.issued.message"]["payload"] == {"type": "object"}
    # What the document says is what the bus writes.
    written = await _written_content_type(app, "orders.created", {"id": 1, "total_cents": 5})
    assert written == order["contentType"]
    assert await _written_content_type(app, "audit.raw", {"x": 1}) == "application/json"

    # The validator does check the Avro schema (so the check above means something).
    broken = copy.deepcopy(document)
    broken["components"]["messages"]["orders.created.message"]["payload"]["schema"] = {"type": 5}
    assert asyncapi_validator(broken) != []

    # A codec instance for one topic, schemas from an HTTP registry: a reference to the
    # subject's latest schema, without the registry's credentials.
    codec = AvroCodec(registry="http://ops:s3cret@registry.internal:8081/")
    app = _avro_app(topic_codecs={"orders.created": codec})
    document = asyncapi_document(app)
    assert asyncapi_validator(document) == []
    assert "s3cret" not in json.dumps(document)
    order = document["components"]["messages"]["orders.created.message"]
    assert order["contentType"] == "application/avro"
    assert order["payload"] == {
        "schemaFormat": "application/vnd.apache.avro+json;version=1.9.0",
        "schema": {
            "$ref": "http://registry.internal:8081/subjects/orders.created-value/versions/latest/schema"
        },
    }
    assert document["defaultContentType"] == "application/json"
    # A subject named after the event type is not known before publishing.
    app = _avro_app(
        topic_codecs={
            "orders.created": AvroCodec(
                registry="http://registry.internal:8081", subject_strategy="record_name"
            )
        }
    )
    order = asyncapi_document(app)["components"]["messages"]["orders.created.message"]
    assert order["contentType"] == "application/avro" and order["payload"] == {"type": "object"}
