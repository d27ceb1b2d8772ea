"""Fixtures: schemas, a fresh in-process registry, and a local Schema Registry server.

The server follows the Confluent Schema Registry REST API as documented: the
routes the codec and Confluent's own client use, its JSON shapes, its
``application/vnd.schemaregistry.v1+json`` content type and its error bodies
(``{"error_code": 40401, "message": ...}``). Confluent's ``SchemaRegistryClient``
is run against it in ``test_http_registry.py`` to show that it is faithful.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from dotmac_events_avro import AvroSchema, InMemorySchemaRegistry, check_compatibility
from dotmac_events_avro.errors import SchemaLoadError

SR_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

ORDER_V1: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "com.acme",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}

# v2 adds a field with a default and removes the optional `note`: readable from v1.
ORDER_V2: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "com.acme",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "currency", "type": "string", "default": "EUR"},
    ],
}

# v3 adds a field without a default: cannot read v1 data.
ORDER_V3_INCOMPATIBLE: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "com.acme",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "region", "type": "string"},
    ],
}


@pytest.fixture
def orders() -> SimpleNamespace:
    """Three versions of one record: v1, v2 (compatible with v1), v3 (incompatible)."""
    return SimpleNamespace(
        v1=copy.deepcopy(ORDER_V1), v2=copy.deepcopy(ORDER_V2), v3=copy.deepcopy(ORDER_V3_INCOMPATIBLE)
    )


@pytest.fixture
def registry() -> InMemorySchemaRegistry:
    return InMemorySchemaRegistry()


@pytest.fixture
def memory_url() -> str:
    # One broker per test: buses of a test share it, tests never do.
    pytest.importorskip("dotmac_events_memory", reason="the bus tests need plugins/memory installed")
    return f"memory://avro-{uuid.uuid4().hex[:8]}"


# -- a local Schema Registry ------------------------------------------------------------------


class FakeSchemaRegistryServer:
    """A Confluent-compatible Schema Registry on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, *, username: str | None = None, password: str | None = None) -> None:
        self.lock = threading.Lock()
        self.schemas: dict[int, str] = {}
        self.ids: dict[str, int] = {}  # canonical JSON -> id
        self.subjects: dict[str, list[int]] = {}
        self.compatibility = "BACKWARD"
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with
        self.redirect_to: str | None = None
        self.auth = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode() if username else None
        )
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server.handle(self, "GET")

            def do_POST(self) -> None:
                server.handle(self, "POST")

            def do_PUT(self) -> None:
                server.handle(self, "PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps shutdown() (and so every test's teardown) fast.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-schema-registry"
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    # -- HTTP ---------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        parts = urlsplit(request.path)
        record = {
            "method": method,
            "path": parts.path,
            "query": parts.query,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": json.loads(raw) if raw else None,
        }
        with self.lock:
            self.requests.append(record)
            forced = self.fail_next.pop(0) if self.fail_next else None
        if self.redirect_to is not None:
            request.send_response(307)
            request.send_header("Location", self.redirect_to + request.path)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if forced is not None:
            return self.reply(request, forced, {"error_code": forced * 100 + 1, "message": "forced failure"})
        if self.auth is not None and request.headers.get("Authorization") != self.auth:
            return self.reply(request, 401, {"error_code": 401, "message": "Unauthorized"})
        if method in ("POST", "PUT") and not (request.headers.get("Content-Type") or "").startswith(
            (SR_CONTENT_TYPE, "application/json")
        ):
            return self.reply(request, 415, {"error_code": 415, "message": "Unsupported Media Type"})
        status, body = self.route(method, [unquote(p) for p in parts.path.strip("/").split("/")], record)
        self.reply(request, status, body)

    @staticmethod
    def reply(request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", SR_CONTENT_TYPE)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    # -- the registry -------------------------------------------------------------------
    def route(self, method: str, segments: list[str], record: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            match (method, segments):
                case ("GET", ["subjects"]):
                    return 200, sorted(self.subjects)
                case ("GET", ["schemas", "ids", schema_id]) if schema_id.isdigit():
                    text = self.schemas.get(int(schema_id))
                    if text is None:
                        return 404, {"error_code": 40403, "message": f"Schema {schema_id} not found"}
                    return 200, {"schema": text}
                case ("POST", ["subjects", subject, "versions"]):
                    return self.register(subject, record["body"])
                case ("POST", ["subjects", subject]):
                    return self.lookup(subject, record["body"])
                case ("GET", ["subjects", subject, "versions"]):
                    if subject not in self.subjects:
                        return 404, self.no_subject(subject)
                    return 200, list(range(1, len(self.subjects[subject]) + 1))
                case ("GET", ["subjects", subject, "versions", version]):
                    return self.version(subject, version)
                case ("PUT", ["config"]):
                    self.compatibility = record["body"]["compatibility"]
                    return 200, {"compatibility": self.compatibility}
        return 404, {"error_code": 404, "message": "HTTP 404 Not Found"}

    @staticmethod
    def no_subject(subject: str) -> dict[str, Any]:
        return {"error_code": 40401, "message": f"Subject '{subject}' not found."}

    @staticmethod
    def parse(body: Any) -> tuple[str, AvroSchema] | None:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            return None
        if body.get("schemaType", "AVRO") != "AVRO":
            return None
        try:
            return body["schema"], AvroSchema.from_text(body["schema"])
        except SchemaLoadError:
            return None

    @staticmethod
    def canonical(text: str) -> str:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))

    def register(self, subject: str, body: Any) -> tuple[int, Any]:
        parsed = self.parse(body)
        if parsed is None:
            return 422, {
                "error_code": 42201,
                "message": "Either the input schema or one of its references is invalid",
            }
        text, schema = parsed
        key = self.canonical(text)
        versions = self.subjects.get(subject, [])
        schema_id = self.ids.get(key)
        if schema_id is not None and schema_id in versions:
            return 200, {"id": schema_id}
        earlier = [AvroSchema.from_text(self.schemas[i]) for i in versions]
        problem = check_compatibility(self.compatibility, schema, earlier)
        if problem is not None:
            return 409, {
                "error_code": 409,
                "message": (
                    "Schema being registered is incompatible with an earlier schema for subject "
                    f'"{subject}", details: [{problem}]'
                ),
            }
        if schema_id is None:
            schema_id = max(self.schemas, default=0) + 1
            self.schemas[schema_id] = text
            self.ids[key] = schema_id
        self.subjects.setdefault(subject, []).append(schema_id)
        return 200, {"id": schema_id}

    def lookup(self, subject: str, body: Any) -> tuple[int, Any]:
        parsed = self.parse(body)
        if parsed is None:
            return 422, {"error_code": 42201, "message": "Invalid schema"}
        if subject not in self.subjects:
            return 404, self.no_subject(subject)
        schema_id = self.ids.get(self.canonical(parsed[0]))
        versions = self.subjects[subject]
        if schema_id is None or schema_id not in versions:
            return 404, {"error_code": 40403, "message": "Schema not found"}
        return 200, {
            "subject": subject,
            "id": schema_id,
            "version": versions.index(schema_id) + 1,
            "schema": self.schemas[schema_id],
        }

    def version(self, subject: str, version: str) -> tuple[int, Any]:
        if subject not in self.subjects:
            return 404, self.no_subject(subject)
        versions = self.subjects[subject]
        if version == "latest":
            index = len(versions) - 1
        elif re.fullmatch(r"\d+", version) and 1 <= int(version) <= len(versions):
            index = int(version) - 1
        else:
            return 404, {"error_code": 40402, "message": f"Version {version} not found."}
        schema_id = versions[index]
        return 200, {
            "subject": subject,
            "id": schema_id,
            "version": index + 1,
            "schema": self.schemas[schema_id],
        }


@pytest.fixture
def registry_server() -> Iterator[FakeSchemaRegistryServer]:
    server = FakeSchemaRegistryServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_registry_server() -> Iterator[Any]:
    started: list[FakeSchemaRegistryServer] = []

    def make(**kwargs: Any) -> FakeSchemaRegistryServer:
        server = FakeSchemaRegistryServer(**kwargs)
        server.start()
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()
