"""The AsyncAPI 3.0 document of an :class:`~dotmac.events.app.App`.

Channels are topics (the app's subscribed and published ones); each subscriber is a
``receive`` operation, each ``@app.publisher`` a ``send`` operation. Message payloads
are JSON Schemas of the handlers' payload types (attrs classes, dataclasses,
``TypedDict``, pydantic models; a plain ``dict`` or ``Event`` is an open object), or
the Avro schema of a topic written with the Avro codec (as a multi-format schema);
the content type is that of the topic's codec; the CloudEvents envelope headers are
the message headers. A server entry describes the
app's transport, without credentials.
"""

from __future__ import annotations

import collections.abc
import inspect
import logging
import re
import types
import typing
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import attrs

from dotmac.events import Event
from dotmac.events.app import App
from dotmac.events.codec import Codec
from dotmac.events.errors import ConfigurationError
from dotmac.events.plugins import get_registry

__all__ = ["asyncapi_document", "payload_schema"]

log = logging.getLogger(__name__)

ASYNCAPI_VERSION = "3.0.0"

# The CloudEvents 1.0 binary-mode headers every message carries (see docs/wire-format.md).
_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"],
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {"type": "string", "description": "event id; unchanged across retries and replays"},
        "ce_type": {"type": "string"},
        "ce_source": {"type": "string"},
        "ce_time": {"type": "string", "format": "date-time"},
        "content-type": {"type": "string"},
        "ce_tenantid": {"type": "string"},
        "ce_correlationid": {"type": "string"},
        "ce_causationid": {"type": "string"},
        "ce_replyto": {"type": "string"},
        "ce_schemaversion": {"type": "string"},
    },
    "additionalProperties": {"type": "string"},
}
_OPEN_OBJECT: dict[str, Any] = {"type": "object"}
# The multi-format schema format of an Avro schema written as JSON.
AVRO_SCHEMA_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
_AVRO_CONTENT_TYPE = "application/avro"
# Nested models are hoisted to components/schemas (a "#/$defs" reference would point
# at the root of the AsyncAPI document).
_REF = "#/components/schemas/{model}"
# URL schemes to AsyncAPI protocol names.
_PROTOCOLS = {"rediss": "redis", "amqps": "amqps", "redis+cluster": "redis", "memory": "memory"}


def _key(text: str) -> str:
    """A component key (AsyncAPI keys are ``[A-Za-z0-9_.-]+``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)


def payload_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of a payload type (an open object for ``dict``/``Event``/unknown)."""
    from pydantic import TypeAdapter

    if tp in (None, Event, dict, Any, inspect.Parameter.empty) or typing.get_origin(tp) is dict:
        return dict(_OPEN_OBJECT)
    if attrs.has(tp):
        # pydantic does not read attrs classes: one schema per field, put together here.
        hints = typing.get_type_hints(tp)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(tp):
            properties[field.name] = payload_schema_of_field(hints.get(field.name, Any))
            if field.default is attrs.NOTHING:
                required.append(field.name)
        schema: dict[str, Any] = {"type": "object", "title": tp.__name__, "properties": properties}
        if required:
            schema["required"] = required
        return schema
    if typing.is_typeddict(tp):
        # pydantic reads typing.TypedDict only from Python 3.12 on: by hand, like attrs.
        hints = typing.get_type_hints(tp)
        schema = {
            "type": "object",
            "title": tp.__name__,
            "properties": {name: payload_schema_of_field(hint) for name, hint in hints.items()},
        }
        required = [name for name in hints if name in tp.__required_keys__]
        if required:
            schema["required"] = required
        return schema
    try:
        return TypeAdapter(tp).json_schema(ref_template=_REF)
    except Exception as exc:
        raise ConfigurationError(f"cannot describe the payload type {tp!r} as JSON Schema: {exc}") from exc


def payload_schema_of_field(tp: Any) -> dict[str, Any]:
    """The schema of one field; containers of attrs classes and TypedDicts are walked
    here because pydantic does not read those."""
    if attrs.has(tp) or typing.is_typeddict(tp):
        return payload_schema(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [payload_schema_of_field(a) for a in args]
        return {"anyOf": options}
    if origin in (list, set, frozenset, collections.abc.Sequence) and len(args) == 1:
        return {"type": "array", "items": payload_schema_of_field(args[0])}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": payload_schema_of_field(args[0])}
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return {"type": "object", "additionalProperties": payload_schema_of_field(args[1])}
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(tp).json_schema(ref_template=_REF)
    except Exception:  # a type pydantic cannot describe: say nothing rather than guess
        return {}


def _server(url: str | None) -> dict[str, Any] | None:
    if not url:
        return None
    parts = urlsplit(url)
    if not parts.scheme:
        return None
    # Only host, port and path: user names, passwords and query options stay out.
    host = parts.hostname or parts.netloc.rsplit("@", 1)[-1] or "localhost"
    if parts.port:
        host = f"{host}:{parts.port}"
    server: dict[str, Any] = {"host": host, "protocol": _PROTOCOLS.get(parts.scheme, parts.scheme)}
    if parts.path and parts.path != "/":
        server["pathname"] = parts.path
    return server


def _topic_codecs(app: App) -> tuple[Codec, dict[str, Codec]]:
    """The codecs the app's bus will write with: the bus's, and those of single topics
    (from the bus options of the app, over the ``bus`` table of a dict target)."""
    options: dict[str, Any] = {}
    if isinstance(app.target, Mapping):
        options.update(app.target.get("bus") or {})
    options.update(app.bus_options)
    registry = get_registry()

    def build(codec: str | Codec, codec_options: Mapping[str, Any] | None) -> Codec:
        if isinstance(codec, Codec):
            return codec
        try:
            return registry.codec(codec).factory(**dict(codec_options or {}))
        except TypeError as exc:
            raise ConfigurationError(f"bad options for the {codec!r} codec: {exc}") from exc

    default = build(options.get("codec") or "json", options.get("codec_options"))
    per_topic = {t: build(c, None) for t, c in (options.get("topic_codecs") or {}).items()}
    return default, per_topic


def avro_payload(codec: Codec, topic: str) -> dict[str, Any] | None:
    """The multi-format schema of ``topic``'s payload when ``codec`` writes it as Avro:
    the configured Avro schema inline, else a reference to the latest schema of the
    topic's subject in the codec's HTTP schema registry. ``None`` for other codecs, and
    when the schema is only known at publish time (an in-process registry, a subject
    named after the event type)."""
    schema_for = getattr(codec, "schema_for", None)
    if codec.content_type != _AVRO_CONTENT_TYPE or schema_for is None:
        return None
    schema = schema_for(topic)
    if schema is not None:
        return {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": schema.raw}
    urls = getattr(getattr(codec, "registry", None), "urls", ())
    subject = codec.registry_subject(topic) if hasattr(codec, "registry_subject") else None
    if not urls or subject is None:
        return None
    # The registry's URLs carry no credentials (the registry keeps them apart).
    ref = f"{urls[0].rstrip('/')}/subjects/{quote(subject, safe='')}/versions/latest/schema"
    return {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": {"$ref": ref}}


def _return_type(fn: Any) -> Any:
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:  # a return annotation that does not resolve: an open object
        return None


def asyncapi_document(
    app: App, *, url: str | None = None, title: str | None = None, version: str = "0.1.0"
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``app`` as a dict (``json.dumps`` it, or YAML).

    ``url`` names the server (default: the app's own target when it is a URL); no
    credential of it reaches the document.
    """
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    default_codec, topic_codecs = _topic_codecs(app)

    def channel(topic: str) -> str:
        key = _key(topic)
        if key not in channels:
            message = f"{key}.message"
            channels[key] = {
                "address": topic,
                "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            }
        return key

    def message(topic: str, schema: dict[str, Any], title_: str | None) -> None:
        key = f"{_key(topic)}.message"
        if key in messages and messages[key]["payload"] != _OPEN_OBJECT:
            return  # the first typed payload of a topic describes it
        codec = topic_codecs.get(topic, default_codec)
        avro = avro_payload(codec, topic)
        if avro is not None:
            schema = avro
        else:
            schema = dict(schema)
            schemas.update(schema.pop("$defs", {}))
        entry: dict[str, Any] = {
            "name": key,
            "contentType": codec.content_type,
            "headers": _HEADERS,
            "payload": schema,
        }
        if title_:
            entry["title"] = title_
        messages[key] = entry

    for spec in app.subscribers:
        payload_type = spec.plan.payload_type if spec.plan is not None else None
        schema = payload_schema(payload_type)
        name = getattr(payload_type, "__name__", None) if payload_type not in (None, Event) else None
        for topic in spec.topics:
            key = channel(topic)
            message(topic, schema, name)
            op = _key(f"receive.{spec.name or spec.title}.{topic}")
            operation: dict[str, Any] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"{spec.title}" + (f" (group {spec.group})" if spec.group else " (broadcast)"),
                "messages": [{"$ref": f"#/channels/{key}/messages/{key}.message"}],
            }
            if spec.handler.__doc__:
                operation["description"] = inspect.cleandoc(spec.handler.__doc__)
            operations[op] = operation
        for pub in app.publishers_of(spec.handler):
            returned = _return_type(spec.handler)
            key = channel(pub.topic)
            name = getattr(returned, "__name__", None) if returned not in (None, dict, Event) else None
            message(pub.topic, payload_schema(returned), name)
            operations[_key(f"send.{spec.name or spec.title}.{pub.topic}")] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"the return value of {spec.title}",
                "messages": [{"$ref": f"#/channels/{key}/messages/{key}.message"}],
            }
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title or app.name, "version": version},
        "defaultContentType": default_codec.content_type,
    }
    target = url if url is not None else (app.target if isinstance(app.target, str) else None)
    server = _server(target)
    if server is not None:
        document["servers"] = {"default": server}
    document["channels"] = channels
    document["operations"] = operations
    document["components"] = {"messages": messages, **({"schemas": schemas} if schemas else {})}
    return document
