"""Payload checks compiled from a parsed Avro schema.

fastavro's writer is lenient where a schema-checked bus must not be: it truncates
``1.5`` to ``1`` for an ``int``, writes ``True`` as ``1``, drops keys that are not
fields and reads a naive ``datetime`` as local time. So every payload is checked
here first, by a tree of small closures built once per schema. A failed check
raises :class:`Mismatch` carrying the path of the bad value, the Avro type that was
expected and the Python type that was found (never the value itself).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from dotmac.events.event import FrozenDict, FrozenList

__all__ = ["Mismatch", "compile_validator", "describe", "format_path", "named_types"]

Check = Callable[[Any], None]
Accepts = Callable[[Any], bool]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_INT = (-(2**31), 2**31 - 1)
_LONG = (-(2**63), 2**63 - 1)
_FLOAT_MAX = 3.4028234663852886e38
_ABSENT = object()


class Mismatch(Exception):
    """A value that does not fit. ``path`` grows innermost-first while it propagates."""

    def __init__(self, expected: str, actual: str, problem: str | None = None) -> None:
        super().__init__(expected, actual, problem)
        self.expected = expected
        self.actual = actual
        self.problem = problem
        self.path: list[str | int] = []

    def describe(self) -> str:
        if self.problem is not None:
            return self.problem
        return f"expected {self.expected}, got {self.actual}"


def format_path(path: list[str | int], root: str = "payload") -> str:
    """``payload['items'][0]['qty']`` from an innermost-first path."""
    return root + "".join(f"[{segment!r}]" for segment in reversed(path))


def actual_type(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return "naive datetime"
    if isinstance(value, FrozenDict):  # an event's read-only payload is a dict to its author
        return "dict"
    if isinstance(value, FrozenList):
        return "list"
    return type(value).__name__


def describe(schema: Any) -> str:
    """A short human name of an Avro type: ``int``, ``acme.Item``, ``array<long>``..."""
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " | ".join(describe(branch) for branch in schema)
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if logical == "decimal":
        return f"decimal({schema.get('precision')},{schema.get('scale', 0)})"
    if isinstance(logical, str) and logical in _LOGICAL_NAMES:
        return logical
    if kind == "record":
        return str(schema["name"])
    if kind == "enum":
        return f"enum {schema['name']}"
    if kind == "fixed":
        return f"fixed {schema['name']}[{schema['size']}]"
    if kind == "array":
        return f"array<{describe(schema['items'])}>"
    if kind == "map":
        return f"map<{describe(schema['values'])}>"
    return describe(kind)


# -- primitives -----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_null(value: Any) -> None:
    if value is not None:
        raise Mismatch("null", actual_type(value))


def _check_boolean(value: Any) -> None:
    if not isinstance(value, bool):
        raise Mismatch("boolean", actual_type(value))


def _ranged(name: str, bounds: tuple[int, int], bits: str) -> Check:
    low, high = bounds

    def check(value: Any) -> None:
        if type(value) is not int and not _is_int(value):
            raise Mismatch(name, actual_type(value))
        if not low <= value <= high:
            raise Mismatch(name, f"an int outside the {bits} range")

    return check


def _check_float(value: Any) -> None:
    if not _is_number(value):
        raise Mismatch("float", actual_type(value))
    try:
        magnitude = abs(float(value))
    except OverflowError:
        raise Mismatch("float", "an int too large for a float") from None
    if magnitude > _FLOAT_MAX and not math.isinf(magnitude):
        raise Mismatch("float", "a number outside the 32-bit float range")


def _check_double(value: Any) -> None:
    if type(value) is float:
        return
    if not _is_number(value):
        raise Mismatch("double", actual_type(value))
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            raise Mismatch("double", "an int too large for a double") from None


def _check_bytes(value: Any) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise Mismatch("bytes", actual_type(value))


def _check_string(value: Any) -> None:
    if not isinstance(value, str):
        raise Mismatch("string", actual_type(value))


_PRIMITIVE_CHECKS: dict[str, Check] = {
    "null": _check_null,
    "boolean": _check_boolean,
    "int": _ranged("int", _INT, "32-bit"),
    "long": _ranged("long", _LONG, "64-bit"),
    "float": _check_float,
    "double": _check_double,
    "bytes": _check_bytes,
    "string": _check_string,
}

_PRIMITIVE_ACCEPTS: dict[str, Accepts] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "int": _is_int,
    "long": _is_int,
    "float": _is_number,
    "double": _is_number,
    "bytes": lambda v: isinstance(v, (bytes, bytearray)),
    "string": lambda v: isinstance(v, str),
}


# -- logical types ---------------------------------------------------------------------------


def _timestamp(name: str, *, aware: bool) -> tuple[Check, Accepts]:
    low, high = _LONG

    def check(value: Any) -> None:
        if isinstance(value, dt.datetime):
            # fastavro reads a naive datetime as local time for timestamp-*: refuse the guess.
            if aware and value.tzinfo is None:
                raise Mismatch(f"{name} (a timezone-aware datetime)", "naive datetime")
            return
        if not _is_int(value):
            raise Mismatch(f"{name} (a datetime)", actual_type(value))
        if not low <= value <= high:
            raise Mismatch(name, "an int outside the 64-bit range")

    return check, lambda v: isinstance(v, dt.datetime) or _is_int(v)


def _date() -> tuple[Check, Accepts]:
    low, high = _INT

    def check(value: Any) -> None:
        if isinstance(value, dt.datetime):
            # A datetime is a date subclass; writing it as a date would drop its time.
            raise Mismatch("date", "datetime")
        if isinstance(value, dt.date):
            return
        if not _is_int(value):
            raise Mismatch("date", actual_type(value))
        if not low <= value <= high:
            raise Mismatch("date", "an int outside the 32-bit range")

    return check, lambda v: (isinstance(v, dt.date) and not isinstance(v, dt.datetime)) or _is_int(v)


def _time(name: str, bounds: tuple[int, int]) -> tuple[Check, Accepts]:
    low, high = bounds

    def check(value: Any) -> None:
        if isinstance(value, dt.time):
            return
        if not _is_int(value):
            raise Mismatch(name, actual_type(value))
        if not low <= value <= high:
            raise Mismatch(name, "an int out of range")

    return check, lambda v: isinstance(v, dt.time) or _is_int(v)


def _uuid() -> tuple[Check, Accepts]:
    def check(value: Any) -> None:
        if isinstance(value, uuid.UUID):
            return
        if not isinstance(value, str):
            raise Mismatch("uuid", actual_type(value))
        try:
            uuid.UUID(value)
        except ValueError:
            raise Mismatch("uuid", "a str that is not a UUID") from None

    return check, lambda v: isinstance(v, (uuid.UUID, str))


def _decimal(schema: Mapping[str, Any]) -> tuple[Check, Accepts]:
    precision = int(schema["precision"])
    scale = int(schema.get("scale", 0))
    size = schema.get("size") if schema.get("type") == "fixed" else None
    label = f"decimal({precision},{scale})"
    limit = 2 ** (8 * size - 1) if size is not None else None

    def check(value: Any) -> None:
        if not isinstance(value, decimal.Decimal):
            raise Mismatch(f"{label} (a decimal.Decimal)", actual_type(value))
        if not value.is_finite():
            raise Mismatch(label, "a Decimal that is not finite")
        _sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        if -exponent > scale:
            raise Mismatch(label, f"a Decimal with more than {scale} fractional digits")
        unscaled_digits = len(digits) + exponent + scale if any(digits) else 1
        if unscaled_digits > precision:
            raise Mismatch(label, f"a Decimal with more than {precision} significant digits")
        if limit is not None:
            unscaled = int(value.scaleb(scale))
            if not -limit <= unscaled < limit:
                raise Mismatch(label, f"a Decimal too large for {size} bytes")

    return check, lambda v: isinstance(v, decimal.Decimal)


_LOGICAL_NAMES = frozenset(
    {
        "decimal",
        "uuid",
        "date",
        "time-millis",
        "time-micros",
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
    }
)


def _logical(schema: Mapping[str, Any]) -> tuple[Check, Accepts] | None:
    logical = schema.get("logicalType")
    kind = schema.get("type")
    if logical == "decimal" and kind in ("bytes", "fixed") and "precision" in schema:
        return _decimal(schema)
    if logical == "uuid" and kind == "string":
        return _uuid()
    if logical == "date" and kind == "int":
        return _date()
    if logical == "time-millis" and kind == "int":
        return _time("time-millis", _INT)
    if logical == "time-micros" and kind == "long":
        return _time("time-micros", _LONG)
    if logical in ("timestamp-millis", "timestamp-micros") and kind == "long":
        return _timestamp(str(logical), aware=True)
    if logical in ("local-timestamp-millis", "local-timestamp-micros") and kind == "long":
        return _timestamp(str(logical), aware=False)
    return None  # unknown logical types are read and written as their underlying type


# -- the compiler ----------------------------------------------------------------------------


class _Compiler:
    def __init__(self, named: Mapping[str, Any], strict: bool) -> None:
        self.named = named
        self.strict = strict
        self.checks: dict[str, Check] = {}

    def accepts(self, schema: Any) -> Accepts:
        """A cheap type test used to pick candidate branches of a union."""
        if isinstance(schema, str):
            if schema in _PRIMITIVE_ACCEPTS:
                return _PRIMITIVE_ACCEPTS[schema]
            return self.accepts(self.named[schema])
        if isinstance(schema, list):
            branches = [self.accepts(b) for b in schema]
            return lambda v: any(a(v) for a in branches)
        logical = _logical(schema)
        if logical is not None:
            return logical[1]
        kind = schema["type"]
        if kind in ("record", "map"):
            return lambda v: type(v) is dict or isinstance(v, Mapping)
        if kind == "array":
            return lambda v: isinstance(v, (list, tuple))
        if kind == "enum":
            return lambda v: isinstance(v, str)
        if kind == "fixed":
            return lambda v: isinstance(v, (bytes, bytearray))
        return self.accepts(kind)

    def compile(self, schema: Any) -> Check:
        if isinstance(schema, str):
            if schema in _PRIMITIVE_CHECKS:
                return _PRIMITIVE_CHECKS[schema]
            return self._named(schema)
        if isinstance(schema, list):
            return self._union(schema)
        logical = _logical(schema)
        if logical is not None:
            return logical[0]
        kind = schema["type"]
        if kind in ("record", "enum", "fixed"):
            name = str(schema["name"])
            existing = self.checks.get(name)
            if existing is not None:
                return existing
            return self._define(name, schema)
        if kind == "array":
            return self._array(schema)
        if kind == "map":
            return self._map(schema)
        return self.compile(kind)

    def _named(self, name: str) -> Check:
        existing = self.checks.get(name)
        if existing is not None:
            return existing
        return self._define(name, self.named[name])

    def _define(self, name: str, schema: Mapping[str, Any]) -> Check:
        # A recursive type refers to itself before its check exists: route through a box.
        box: list[Check] = []

        def late(value: Any) -> None:
            box[0](value)

        self.checks[name] = late
        kind = schema["type"]
        if kind == "record":
            check = self._record(schema)
        elif kind == "enum":
            check = self._enum(schema)
        else:
            check = self._fixed(schema)
        box.append(check)
        self.checks[name] = check
        return check

    def _record(self, schema: Mapping[str, Any]) -> Check:
        record_name = str(schema["name"])
        fields = [
            (str(f["name"]), self.compile(f["type"]), "default" in f, describe(f["type"]))
            for f in schema["fields"]
        ]
        names = frozenset(name for name, *_ in fields)
        strict = self.strict

        def check(value: Any) -> None:
            # `type(...) is dict` first: the ABC isinstance check costs more than the rest.
            if type(value) is not dict and not isinstance(value, Mapping):
                raise Mismatch(record_name, actual_type(value))
            found = 0
            for name, sub, has_default, type_name in fields:
                item = value.get(name, _ABSENT)
                if item is not _ABSENT:
                    found += 1
                    try:
                        sub(item)
                    except Mismatch as exc:
                        exc.path.append(name)
                        raise
                elif not has_default:
                    missing = Mismatch(
                        type_name, "nothing", f"missing field of {record_name} (expected {type_name})"
                    )
                    missing.path.append(name)
                    raise missing
            if strict and found != len(value):
                for key in value:
                    if key not in names:
                        extra = Mismatch(
                            "no such field",
                            actual_type(value[key]),
                            f"{key!r} is not a field of {record_name}",
                        )
                        extra.path.append(key if isinstance(key, (str, int)) else repr(key))
                        raise extra

        return check

    def _enum(self, schema: Mapping[str, Any]) -> Check:
        symbols = frozenset(schema["symbols"])
        label = describe(schema)

        def check(value: Any) -> None:
            if not isinstance(value, str):
                raise Mismatch(label, actual_type(value))
            if value not in symbols:
                raise Mismatch(label, "a str that is not one of its symbols")

        return check

    def _fixed(self, schema: Mapping[str, Any]) -> Check:
        size = int(schema["size"])
        label = describe(schema)

        def check(value: Any) -> None:
            if not isinstance(value, (bytes, bytearray)):
                raise Mismatch(label, actual_type(value))
            if len(value) != size:
                raise Mismatch(label, f"{len(value)} bytes")

        return check

    def _array(self, schema: Mapping[str, Any]) -> Check:
        item = self.compile(schema["items"])
        label = describe(schema)

        def check(value: Any) -> None:
            if not isinstance(value, (list, tuple)):
                raise Mismatch(label, actual_type(value))
            for index, element in enumerate(value):
                try:
                    item(element)
                except Mismatch as exc:
                    exc.path.append(index)
                    raise

        return check

    def _map(self, schema: Mapping[str, Any]) -> Check:
        item = self.compile(schema["values"])
        label = describe(schema)

        def check(value: Any) -> None:
            if type(value) is not dict and not isinstance(value, Mapping):
                raise Mismatch(label, actual_type(value))
            for key, element in value.items():
                if not isinstance(key, str):
                    raise Mismatch(label, f"a {type(key).__name__} key (map keys are strings)")
                try:
                    item(element)
                except Mismatch as exc:
                    exc.path.append(key)
                    raise

        return check

    def _union(self, schema: list[Any]) -> Check:
        branches = [(self.accepts(b), self.compile(b)) for b in schema]
        label = describe(schema)

        def check(value: Any) -> None:
            first: Mismatch | None = None
            candidates = 0
            for accepts, sub in branches:
                if not accepts(value):
                    continue
                candidates += 1
                try:
                    sub(value)
                    return
                except Mismatch as exc:
                    if first is None:
                        first = exc
            if first is not None and candidates == 1:
                raise first  # the only branch of the right kind: its precise reason
            if candidates == 0:
                raise Mismatch(label, actual_type(value))
            raise Mismatch(label, f"a {actual_type(value)} that fits none of its branches")

        return check


def compile_validator(parsed: Any, *, strict: bool = True) -> Check:
    """Build the checker of a fastavro-parsed schema.

    With ``strict`` a record value may hold only keys that are fields of the record;
    a field may be absent only if the schema gives it a default. The checker raises
    :class:`Mismatch`.
    """
    return _Compiler(named_types(parsed), strict).compile(parsed)


def named_types(parsed: Any) -> Mapping[str, Any]:
    """The named types (full name -> definition) of a fastavro-parsed schema."""
    if isinstance(parsed, list):
        # fastavro gives every branch of a top-level union the union's whole name table.
        parsed = next((branch for branch in parsed if isinstance(branch, dict)), {})
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    return named if isinstance(named, Mapping) else {}
