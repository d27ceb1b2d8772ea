"""The HTTP registry client against a local server speaking the Schema Registry REST API."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from dotmac.events import Event
from dotmac.events.errors import ConfigurationError, DecodeError, EncodeError
from dotmac_events_avro import (
    AvroCodec,
    AvroSchema,
    HttpSchemaRegistry,
    IncompatibleSchemaError,
    InvalidSchemaError,
    SchemaNotFoundError,
    SchemaRegistryError,
    SchemaRegistryUnavailableError,
    SubjectNotFoundError,
)

SR_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def text(schema: dict[str, Any]) -> str:
    return AvroSchema(schema).text


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def test_register_lookup_get_latest(registry_server: Any, orders: SimpleNamespace) -> None:
    client = HttpSchemaRegistry(registry_server.url)
    v1, v2 = text(orders.v1), text(orders.v2)
    assert client.register("orders-value", v1) == 1
    assert client.register("orders-value", v2) == 2
    fresh = HttpSchemaRegistry(registry_server.url)  # no cache
    assert fresh.lookup("orders-value", v1) == 1
    assert fresh.get_schema(2) == v2
    latest = fresh.latest("orders-value")
    assert (latest.subject, latest.version, latest.schema_id, latest.schema) == ("orders-value", 2, 2, v2)
    assert fresh.version("orders-value", 1).schema_id == 1
    assert fresh.subjects() == ["orders-value"]


def test_requests_follow_the_rest_shapes(registry_server: Any, orders: SimpleNamespace) -> None:
    client = HttpSchemaRegistry(registry_server.url)
    v1 = text(orders.v1)
    client.register("orders-value", v1)
    HttpSchemaRegistry(registry_server.url).lookup("orders-value", v1)
    HttpSchemaRegistry(registry_server.url).get_schema(1)
    HttpSchemaRegistry(registry_server.url).latest("orders-value")
    seen = [(r["method"], r["path"]) for r in registry_server.requests]
    assert seen == [
        ("POST", "/subjects/orders-value/versions"),
        ("POST", "/subjects/orders-value"),
        ("GET", "/schemas/ids/1"),
        ("GET", "/subjects/orders-value/versions/latest"),
    ]
    register, lookup = registry_server.requests[0], registry_server.requests[1]
    for request in (register, lookup):
        assert request["headers"]["content-type"] == SR_CONTENT_TYPE
        assert request["body"] == {"schema": v1}
    for request in registry_server.requests:
        assert request["headers"]["accept"].startswith(SR_CONTENT_TYPE)
        assert "authorization" not in request["headers"]


def test_subjects_are_percent_encoded(registry_server: Any, orders: SimpleNamespace) -> None:
    client = HttpSchemaRegistry(registry_server.url)
    client.register("eu/orders value", text(orders.v1))
    assert registry_server.requests[-1]["path"] == "/subjects/eu%2Forders%20value/versions"
    assert client.latest("eu/orders value").schema_id == 1


# -- error bodies -----------------------------------------------------------------------------


def test_subject_not_found(registry_server: Any) -> None:
    with pytest.raises(SubjectNotFoundError) as info:
        HttpSchemaRegistry(registry_server.url).latest("missing-value")
    error = info.value
    assert (error.status, error.error_code, error.retriable) == (404, 40401, False)
    assert "Subject 'missing-value' not found." in str(error)


def test_schema_and_version_not_found(registry_server: Any, orders: SimpleNamespace) -> None:
    client = HttpSchemaRegistry(registry_server.url)
    with pytest.raises(SchemaNotFoundError) as info:
        client.get_schema(77)
    assert (info.value.status, info.value.error_code) == (404, 40403)
    assert not isinstance(info.value, SubjectNotFoundError)
    client.register("orders-value", text(orders.v1))
    with pytest.raises(SchemaNotFoundError) as version:
        client.version("orders-value", 9)
    assert version.value.error_code == 40402
    with pytest.raises(SchemaNotFoundError) as lookup:
        client.lookup("orders-value", text(orders.v2))
    assert lookup.value.error_code == 40403


def test_incompatible_schema(registry_server: Any, orders: SimpleNamespace) -> None:
    client = HttpSchemaRegistry(registry_server.url)
    client.register("orders-value", text(orders.v1))
    with pytest.raises(IncompatibleSchemaError) as info:
        client.register("orders-value", text(orders.v3))
    assert (info.value.status, info.value.error_code) == (409, 409)
    assert "Schema being registered is incompatible with an earlier schema" in str(info.value)
    assert "region" in str(info.value)


def test_invalid_schema(registry_server: Any) -> None:
    with pytest.raises(InvalidSchemaError) as info:
        HttpSchemaRegistry(registry_server.url).register("x-value", '{"type": "nonsense"}')
    assert (info.value.status, info.value.error_code) == (422, 42201)


# -- caching ----------------------------------------------------------------------------------


def test_ids_and_schemas_are_cached(registry_server: Any, orders: SimpleNamespace) -> None:
    client = HttpSchemaRegistry(registry_server.url)
    v1 = text(orders.v1)
    client.register("orders-value", v1)
    client.register("orders-value", v1)
    client.register("orders-value", json.dumps(orders.v1, indent=4))  # same schema, other spelling
    client.lookup("orders-value", v1)
    assert client.get_schema(1) == v1
    assert len(registry_server.requests) == 1
    other = HttpSchemaRegistry(registry_server.url)
    other.get_schema(1)
    other.get_schema(1)
    assert len(registry_server.requests) == 2


def test_codec_talks_to_the_registry_once_per_schema(registry_server: Any, orders: SimpleNamespace) -> None:
    producer = AvroCodec(schemas={"orders": orders.v1}, registry=registry_server.url)
    consumer = AvroCodec(schemas={"orders": orders.v2}, registry={"url": registry_server.url, "timeout": 5})
    for i in range(5):
        data = producer.encode(Event(topic="orders", payload={"id": i, "customer": "c"}))
        assert consumer.decode(data, topic="orders", headers={}) == {
            "id": i,
            "customer": "c",
            "currency": "EUR",
        }
    assert [(r["method"], r["path"]) for r in registry_server.requests] == [
        ("POST", "/subjects/orders-value/versions"),
        ("GET", "/schemas/ids/1"),
    ]


# -- failures ---------------------------------------------------------------------------------


def test_unreachable_registry_is_retriable(closed_port: int) -> None:
    client = HttpSchemaRegistry(f"http://127.0.0.1:{closed_port}", timeout=2)
    with pytest.raises(SchemaRegistryUnavailableError) as info:
        client.get_schema(1)
    assert info.value.retriable is True
    assert f"127.0.0.1:{closed_port}" in str(info.value)


def test_timeout(silent_port: int) -> None:
    client = HttpSchemaRegistry(f"http://127.0.0.1:{silent_port}", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(SchemaRegistryUnavailableError):
        client.latest("s")
    assert time.monotonic() - started < 5


def test_failover_to_the_next_url(registry_server: Any, closed_port: int, orders: SimpleNamespace) -> None:
    client = HttpSchemaRegistry(f"http://127.0.0.1:{closed_port},{registry_server.url}")
    assert client.register("orders-value", text(orders.v1)) == 1
    registry_server.fail_next = [503]
    client2 = HttpSchemaRegistry([registry_server.url, registry_server.url])
    assert client2.get_schema(1) == text(orders.v1)  # the 503 made it try again


def test_server_errors_are_retriable(registry_server: Any) -> None:
    registry_server.fail_next = [500]
    with pytest.raises(SchemaRegistryUnavailableError) as info:
        HttpSchemaRegistry(registry_server.url).get_schema(1)
    assert (info.value.status, info.value.error_code, info.value.retriable) == (500, 50001, True)


def test_codec_errors_when_the_registry_is_down(closed_port: int, orders: SimpleNamespace) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    producer = AvroCodec(schemas={"orders": orders.v1}, registry=url)
    with pytest.raises(EncodeError, match="no Avro schema id for topic 'orders'.*unreachable") as info:
        producer.encode(Event(topic="orders", payload={"id": 1, "customer": "c"}))
    assert isinstance(info.value.__cause__, SchemaRegistryUnavailableError)
    consumer = AvroCodec(registry=url)
    with pytest.raises(DecodeError, match="cannot fetch writer schema id 3"):
        consumer.decode(b"\x00\x00\x00\x00\x03\x02", topic="orders", headers={})


# -- credentials and safety -------------------------------------------------------------------


def test_basic_auth_from_the_url(make_registry_server: Any, orders: SimpleNamespace) -> None:
    server = make_registry_server(username="key", password="p@ss:w/rd")
    host = server.url.removeprefix("http://")
    client = HttpSchemaRegistry(f"http://key:p%40ss%3Aw%2Frd@{host}")
    assert client.register("s", text(orders.v1)) == 1
    assert server.requests[-1]["headers"]["authorization"].startswith("Basic ")
    assert "p@ss" not in repr(client)
    assert "p%40ss" not in repr(client)
    assert client.urls == (server.url,)


def test_wrong_credentials_are_not_retriable_and_not_shown(make_registry_server: Any) -> None:
    server = make_registry_server(username="key", password="right")
    client = HttpSchemaRegistry(server.url, username="key", password="wrong-secret")
    with pytest.raises(SchemaRegistryError) as info:
        client.get_schema(1)
    assert (info.value.status, info.value.retriable) == (401, False)
    assert "wrong-secret" not in str(info.value)
    assert "wrong-secret" not in repr(client)


def test_bearer_token(registry_server: Any) -> None:
    client = HttpSchemaRegistry(registry_server.url, token="tok-123")
    with pytest.raises(SchemaNotFoundError):
        client.get_schema(1)
    assert registry_server.requests[-1]["headers"]["authorization"] == "Bearer tok-123"
    with pytest.raises(ConfigurationError, match="not both"):
        HttpSchemaRegistry(registry_server.url, token="t", username="u", password="p")


def test_redirects_are_refused(make_registry_server: Any) -> None:
    target = make_registry_server()
    source = make_registry_server(username="key", password="secret")
    source.redirect_to = target.url
    client = HttpSchemaRegistry(source.url, username="key", password="secret")
    with pytest.raises(SchemaRegistryError) as info:
        client.get_schema(1)
    assert info.value.status == 307
    assert target.requests == []  # the credentials never left for the other host


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "a schema registry URL is required"),
        ("file:///etc/passwd", "must be http\\(s\\)://"),
        ("http://", "must be http\\(s\\)://"),
        ("ftp://user:secret@host", "must be http\\(s\\)://"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        HttpSchemaRegistry(url)
    assert "secret" not in str(info.value)


# -- the local server is faithful: Confluent's own client works against it ---------------------


def test_confluent_client_against_the_local_server(registry_server: Any, orders: SimpleNamespace) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError as ConfluentError

    theirs = SchemaRegistryClient({"url": registry_server.url})
    ours = HttpSchemaRegistry(registry_server.url)
    schema_id = theirs.register_schema("orders-value", Schema(text(orders.v1), "AVRO"))
    assert ours.lookup("orders-value", text(orders.v1)) == schema_id
    second = ours.register("orders-value", text(orders.v2))
    assert json.loads(theirs.get_schema(second).schema_str) == json.loads(text(orders.v2))
    assert theirs.get_latest_version("orders-value").schema_id == second
    with pytest.raises(ConfluentError) as missing:
        theirs.get_latest_version("nope-value")
    assert (missing.value.http_status_code, missing.value.error_code) == (404, 40401)
    with pytest.raises(ConfluentError) as incompatible:
        theirs.register_schema("orders-value", Schema(text(orders.v3), "AVRO"))
    assert incompatible.value.http_status_code == 409
