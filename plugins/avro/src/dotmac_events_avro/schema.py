"""Loading and parsing Avro schemas from ``.avsc`` files, dicts and JSON text."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from fastavro import parse_schema

from .errors import SchemaLoadError

__all__ = ["AvroSchema", "SchemaSource", "load_schema", "normalize_schema_text"]

SchemaSource = Union["AvroSchema", Mapping[str, Any], Sequence[Any], str, "os.PathLike[str]"]
"""A schema: an :class:`AvroSchema`, a dict (a list for a union), JSON text, or the
path of an ``.avsc`` file."""

# Bigger schemas are almost certainly a mistake (a data file given as a schema).
MAX_SCHEMA_BYTES = 4 * 1024 * 1024


def normalize_schema_text(text: str) -> str:
    """Compact JSON with sorted keys: two spellings of one schema give one string.

    Used as the identity of a schema by the in-process registry and the id caches.
    Raises ``ValueError`` if ``text`` is not JSON.
    """
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class AvroSchema:
    """A parsed Avro schema: its JSON ``text`` (what registries store), the fastavro
    form ``parsed`` and the full ``name`` of its top-level named type (``None`` for
    unnamed types). Build one with :func:`load_schema` or :meth:`from_text`.
    """

    __slots__ = ("_lock", "_validators", "name", "parsed", "raw", "text", "type")

    def __init__(self, raw: Any, *, origin: str = "schema") -> None:
        try:
            text = json.dumps(raw, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            # A private copy: the caller's dict may change later, the schema must not.
            self.raw: Any = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise SchemaLoadError(f"{origin} is not JSON-serialisable: {exc}") from exc
        try:
            self.parsed: Any = parse_schema(json.loads(text))
        except Exception as exc:  # fastavro raises several unrelated types for bad schemas
            raise SchemaLoadError(f"{origin} is not a valid Avro schema: {exc}") from exc
        self.text = text
        if isinstance(self.parsed, dict):
            self.type: str = "union" if isinstance(self.parsed["type"], list) else str(self.parsed["type"])
            name = self.parsed.get("name")
            self.name: str | None = str(name) if name is not None else None
        elif isinstance(self.parsed, list):
            self.type = "union"
            self.name = None
        else:
            self.type = str(self.parsed)
            self.name = None
        self._validators: dict[bool, Callable[[Any], None]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_text(cls, text: str, *, origin: str = "schema") -> AvroSchema:
        """Parse schema JSON text (as stored by a registry)."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise SchemaLoadError(f"{origin} is not JSON: {exc}") from exc
        return cls(raw, origin=origin)

    @property
    def is_record(self) -> bool:
        return self.type == "record"

    @property
    def holds_records(self) -> bool:
        """A record, or a union whose branches are all records (several event shapes
        on one topic): what an event payload, always a dict, can be written as."""
        if self.type == "record":
            return True
        if not isinstance(self.parsed, list) or not self.parsed:
            return False
        named = {}  # a branch may name a record defined by an earlier branch
        for branch in self.parsed:
            if isinstance(branch, dict) and branch.get("type") == "record":
                named[branch["name"]] = branch
            elif not (isinstance(branch, str) and branch in named):
                return False
        return True

    def validator(self, *, strict: bool) -> Callable[[Any], None]:
        """The compiled payload checker (see :mod:`dotmac_events_avro.validate`)."""
        check = self._validators.get(strict)
        if check is None:
            from .validate import compile_validator

            with self._lock:
                check = self._validators.get(strict)
                if check is None:
                    check = compile_validator(self.parsed, strict=strict)
                    self._validators[strict] = check
        return check

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AvroSchema):
            return NotImplemented
        return self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"<AvroSchema {self.name or self.type}>"


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[", '"')


def load_schema(source: SchemaSource, *, origin: str | None = None) -> AvroSchema:
    """Build an :class:`AvroSchema` from a dict (a list for a union), JSON text, or an
    ``.avsc`` path.

    A ``str`` whose first non-blank character is ``{``, ``[`` or ``"`` is JSON text;
    any other ``str`` (and any ``os.PathLike``) is a file path. Raises
    :class:`~dotmac_events_avro.errors.SchemaLoadError` naming the source.
    """
    if isinstance(source, AvroSchema):
        return source
    if isinstance(source, Mapping):
        return AvroSchema(dict(source), origin=origin or "schema dict")
    if isinstance(source, (list, tuple)):
        return AvroSchema(list(source), origin=origin or "union schema")
    if isinstance(source, str) and _looks_like_json(source):
        return AvroSchema.from_text(source, origin=origin or "schema text")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = origin or f"schema file {str(path)!r}"
        try:
            size = path.stat().st_size
            if size > MAX_SCHEMA_BYTES:
                raise SchemaLoadError(f"{where} is {size} bytes, more than {MAX_SCHEMA_BYTES}")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SchemaLoadError(f"cannot read {where}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise SchemaLoadError(f"{where} is not UTF-8: {exc}") from exc
        return AvroSchema.from_text(text, origin=where)
    raise SchemaLoadError(
        f"a schema is a dict, a list, JSON text or an .avsc path, not {type(source).__name__}"
        + (f" ({origin})" if origin else "")
    )
