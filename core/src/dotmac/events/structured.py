"""CloudEvents structured content mode: the whole event as one JSON document.

In binary mode (this package's default) the body is the payload and the attributes
travel as ``ce_*`` headers. In structured mode the body is a JSON object holding the
attributes and the data, and the message's ``content-type`` is
``application/cloudevents+json``. Producers in other languages often write it; the
core reads it on every transport and can write it per bus or per topic
(``create_bus(content_mode="structured")``, ``topic_modes={...}``).

Batched mode (``application/cloudevents-batch+json``, an array of events in one
message) is not read: the Kafka protocol binding does not allow it, and one message
carrying several events could not be acknowledged, retried or dead-lettered event by
event. Such a message is dead-lettered with a reason that says so.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .errors import ConfigurationError, DecodeError

if TYPE_CHECKING:
    from .codec import Codec

__all__ = ["BATCH_CONTENT_TYPE", "CONTENT_MODES", "STRUCTURED_CONTENT_TYPE", "check_content_mode"]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
CONTENT_MODES = ("binary", "structured")

# Attributes whose value must be text; extensions may also be numbers or booleans,
# which CloudEvents maps to their canonical text.
_TEXT_ATTRIBUTES = frozenset({"specversion", "id", "type", "source", "time", "subject", "dataschema"})


def check_content_mode(mode: object, *, field: str) -> str:
    """``mode`` if it is a content mode; :class:`ConfigurationError` naming ``field`` otherwise."""
    if mode not in CONTENT_MODES:
        raise ConfigurationError(
            f"{field} must be one of {', '.join(map(repr, CONTENT_MODES))}, not {mode!r}"
        )
    return str(mode)


def is_json_type(content_type: str | None) -> bool:
    """Whether CloudEvents' JSON format carries data of this media type as JSON."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def _text(name: str, value: object, topic: str) -> str:
    if value.__class__ is str:
        return value
    if name not in _TEXT_ATTRIBUTES:
        if value is True or value is False:
            return "true" if value else "false"
        if value.__class__ is int:
            return str(value)
    raise DecodeError(
        f"structured event on {topic!r}: attribute {name!r} is a {type(value).__name__}, "
        "not a CloudEvents attribute value"
    )


def read_structured(
    topic: str,
    value: bytes,
    envelope: dict[str, str],
    decoder_for: Callable[[str | None], Codec | None],
    headers: Mapping[str, str],
) -> Any:
    """Fill ``envelope`` from a structured-mode body and return the decoded payload.

    ``envelope`` holds the envelope headers of the message (its ``content-type`` is
    the structured one); the attributes in the body are added to it by header name
    (``ce_<name>``, and ``content-type`` for ``datacontenttype``). A ``ce_*`` header
    that disagrees with the body is refused as ambiguous.
    """
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"structured event on {topic!r} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DecodeError(f"structured event on {topic!r} is a JSON {type(document).__name__}, not an object")
    if document.get("specversion") is None:
        # Binary mode may leave it out (read as 1.0); a structured document without
        # it is not a CloudEvent at all.
        raise DecodeError(f"structured event on {topic!r} has no specversion")
    del envelope["content-type"]
    has_data = "data" in document
    has_base64 = "data_base64" in document
    if has_data and has_base64:
        raise DecodeError(f"structured event on {topic!r} has both data and data_base64")
    for name, raw in document.items():
        if name == "data" or name == "data_base64":
            continue
        if raw is None:
            # The JSON format allows null for an absent optional attribute.
            continue
        text = _text(name, raw, topic)
        header = "content-type" if name == "datacontenttype" else "ce_" + name
        previous = envelope.setdefault(header, text)
        if previous != text:
            raise DecodeError(
                f"ambiguous envelope: {header!r} differs between the header and the structured body"
            )
    content_type = envelope.get("content-type")
    if has_base64:
        encoded = document["data_base64"]
        if encoded.__class__ is not str:
            raise DecodeError(f"structured event on {topic!r}: data_base64 is not text")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"structured event on {topic!r}: data_base64 is not base64: {exc}") from exc
    elif not has_data:
        return None
    elif is_json_type(content_type):
        # Already JSON: the value is the payload, no second parse.
        return document["data"]
    elif document["data"].__class__ is str:
        data = document["data"].encode()
    else:
        raise DecodeError(
            f"structured event on {topic!r}: data of type {content_type!r} must be text or data_base64"
        )
    media = None if content_type is None else content_type.split(";", 1)[0].strip().lower()
    codec = decoder_for(media)
    if codec is None:
        raise DecodeError(f"no installed codec reads content type {media!r}")
    return codec.decode(data, topic=topic, headers=headers)


def write_structured(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
    """The structured-mode headers and body of a binary-mode encoding (``headers``, ``body``).

    User headers stay headers; the ``ce_*`` attributes and the data move into the
    body, and ``content-type`` becomes ``application/cloudevents+json``.
    """
    out: dict[str, str] = {}
    document: dict[str, str] = {}
    content_type = None
    for name, value in headers.items():
        if name.startswith("ce_"):
            document[name[3:]] = value
        elif name == "content-type":
            content_type = value
        else:
            out[name] = value
    if content_type is not None:
        document["datacontenttype"] = content_type
    out["content-type"] = STRUCTURED_CONTENT_TYPE
    head = orjson.dumps(document)
    if not body:
        return out, head
    if is_json_type(content_type):
        # The codec's bytes are JSON already: spliced in, not parsed and written again.
        return out, head[:-1] + b',"data":' + body + b"}"
    return out, head[:-1] + b',"data_base64":' + orjson.dumps(base64.b64encode(body).decode()) + b"}"
