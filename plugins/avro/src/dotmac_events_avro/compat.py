"""Can a reader schema read what a writer schema wrote? (Avro schema resolution.)

Implements the resolution rules of the Avro specification at the schema level,
the way schema registries judge compatibility: records match by unqualified name
or reader alias, a reader field missing from the writer needs a default, writer
enum symbols missing from the reader need a reader default, fixed sizes must be
equal, numbers may be promoted (int to long/float/double, long to float/double,
float to double) and string and bytes read each other. Every branch of a writer
union must be readable; a non-union writer needs one readable reader branch.
Logical types do not take part (they annotate the underlying type).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import AvroSchema
from .validate import PRIMITIVES, describe, named_types

__all__ = ["COMPATIBILITY_LEVELS", "check_compatibility", "read_problem"]

_PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)

COMPATIBILITY_LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)


def _unqualified(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Resolver:
    def __init__(
        self, reader_named: Mapping[str, Any], writer_named: Mapping[str, Any], *, per_value: bool = False
    ) -> None:
        self.reader_named = reader_named
        self.writer_named = writer_named
        self.in_progress: set[tuple[str, str]] = set()
        # Reading data (not judging compatibility): an enum symbol or a writer union
        # branch the reader lacks fails only the values that hold it, as the Avro
        # specification resolves data and Confluent's deserializer applies it.
        self.per_value = per_value

    @staticmethod
    def _deref(schema: Any, named: Mapping[str, Any]) -> Any:
        while True:
            if isinstance(schema, str) and schema not in PRIMITIVES:
                schema = named[schema]
            elif isinstance(schema, dict) and not isinstance(schema.get("type"), str):
                schema = schema["type"]  # {"type": [...]} or {"type": {...}}
            elif (
                isinstance(schema, dict)
                and schema["type"] not in PRIMITIVES
                and schema["type"] not in ("record", "enum", "fixed", "array", "map")
            ):
                schema = named[schema["type"]]  # {"type": "some.Named"}
            else:
                return schema

    @staticmethod
    def _kind(schema: Any) -> str:
        if isinstance(schema, list):
            return "union"
        if isinstance(schema, str):
            return schema
        return str(schema["type"])

    def problem(self, reader: Any, writer: Any, path: str) -> str | None:
        reader = self._deref(reader, self.reader_named)
        writer = self._deref(writer, self.writer_named)
        r_kind, w_kind = self._kind(reader), self._kind(writer)
        if w_kind == "union":
            problems = [self.problem(reader, branch, path) for branch in writer]
            if self.per_value:
                if all(found is not None for found in problems):
                    return problems[0]
                return None
            return next((found for found in problems if found is not None), None)
        if r_kind == "union":
            for branch in reader:
                if self.problem(branch, writer, path) is None:
                    return None
            return (
                f"{path}: the reader's {describe(reader)} has no branch for the writer's {describe(writer)}"
            )
        if r_kind == w_kind:
            if r_kind in PRIMITIVES:
                return None
            if r_kind == "array":
                return self.problem(reader["items"], writer["items"], f"{path}[]")
            if r_kind == "map":
                return self.problem(reader["values"], writer["values"], f"{path}{{}}")
            name_problem = self._names(reader, writer, path)
            if name_problem is not None:
                return name_problem
            if r_kind == "fixed":
                if reader["size"] != writer["size"]:
                    return (
                        f"{path}: fixed {reader['name']} is {reader['size']} bytes for the reader "
                        f"and {writer['size']} for the writer"
                    )
                return None
            if r_kind == "enum":
                missing = [s for s in writer["symbols"] if s not in set(reader["symbols"])]
                if missing and "default" not in reader and not self.per_value:
                    return (
                        f"{path}: enum {reader['name']} of the reader lacks the writer's symbols "
                        f"{', '.join(missing)} and has no default"
                    )
                return None
            return self._record(reader, writer, path)
        if (w_kind, r_kind) in _PROMOTIONS:
            return None
        return f"{path}: the reader expects {describe(reader)}, the writer wrote {describe(writer)}"

    @staticmethod
    def _names(reader: Mapping[str, Any], writer: Mapping[str, Any], path: str) -> str | None:
        r_name, w_name = str(reader["name"]), str(writer["name"])
        aliases = {str(a) for a in reader.get("aliases", ())}
        aliases |= {_unqualified(a) for a in aliases}
        if _unqualified(r_name) == _unqualified(w_name) or {w_name, _unqualified(w_name)} & aliases:
            return None
        return f"{path}: the reader's {reader['type']} {r_name} does not match the writer's {w_name}"

    def _record(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: str) -> str | None:
        key = (str(reader["name"]), str(writer["name"]))
        if key in self.in_progress:
            return None  # a recursive reference: assumed to match while its outer check runs
        self.in_progress.add(key)
        try:
            written = {str(f["name"]): f for f in writer["fields"]}
            for field in reader["fields"]:
                name = str(field["name"])
                source = written.get(name)
                if source is None:
                    for alias in field.get("aliases", ()):
                        source = written.get(str(alias))
                        if source is not None:
                            break
                where = f"{path}.{name}"
                if source is None:
                    if "default" not in field:
                        return f"{where}: the reader's field has no default and the writer has no such field"
                    continue
                found = self.problem(field["type"], source["type"], where)
                if found is not None:
                    return found
            return None
        finally:
            self.in_progress.discard(key)


def read_problem(reader: AvroSchema, writer: AvroSchema, *, per_value: bool = False) -> str | None:
    """Why ``reader`` cannot read data written with ``writer``, or ``None`` if it can.

    With ``per_value`` (decoding, not compatibility checks) a writer enum symbol the
    reader lacks, or a writer union branch it cannot read, is not a problem of the
    schemas: only a value that holds it fails, when it is read (the reader's enum
    default is used where there is one).
    """
    if reader.text == writer.text:
        return None
    resolver = _Resolver(named_types(reader.parsed), named_types(writer.parsed), per_value=per_value)
    return resolver.problem(reader.parsed, writer.parsed, reader.name or describe(reader.parsed))


def check_compatibility(level: str, new: AvroSchema, existing: list[AvroSchema]) -> str | None:
    """Check ``new`` against a subject's ``existing`` versions (oldest first) under a
    registry compatibility ``level``; returns the first problem or ``None``."""
    level = level.upper()
    if level == "NONE" or not existing:
        return None
    against = existing if level.endswith("_TRANSITIVE") else existing[-1:]
    base = level.removesuffix("_TRANSITIVE")
    for old in reversed(against):
        if base in ("BACKWARD", "FULL"):
            found = read_problem(new, old)
            if found is not None:
                return f"the new schema cannot read data written with an earlier one: {found}"
        if base in ("FORWARD", "FULL"):
            found = read_problem(old, new)
            if found is not None:
                return f"an earlier schema cannot read data written with the new one: {found}"
    return None
