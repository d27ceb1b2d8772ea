"""Validators for the fields of a transport's configuration class (an attrs class).

A plugin names its class once and takes its validators from that::

    from attrs import field, frozen

    from dotmac.events.config_fields import FieldChecks

    check = FieldChecks("ExampleConfig")


    @frozen
    class ExampleConfig:
        host: str = field(default="localhost", validator=check.host)
        port: int = field(default=9000, validator=check.int_in(1, 65535))
        prefetch_count: int | None = field(default=None, validator=check.optional(check.int_in(1)))
        timeout: float = field(default=5.0, validator=check.positive_number)
        max_age: float = field(default=0.0, validator=check.non_negative_number)
        password: str | None = field(default=None, repr=False, validator=check.optional_text)
        mode: str = field(default="safe", validator=check.choice("safe", "fast"))

A bad value raises :class:`~dotmac.events.errors.ConfigurationError` naming the class
and field, what is expected and the value given (``ExampleConfig.port must be an int
from 1 to 65535, got 0``); :attr:`FieldChecks.optional_text` never repeats the value,
since text fields may hold secrets. ``bool`` is not taken for an int or a number, and
a number must be finite (``nan`` and ``inf`` are refused).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError

__all__ = ["FieldChecks", "Validator"]

Validator = Callable[[Any, Any, Any], None]
"""An attrs validator: ``(instance, attribute, value) -> None``, raising on a bad value."""


class FieldChecks:
    """The validators of one configuration class; ``owner`` is its name in messages."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def error(self, name: str, expected: str, value: Any) -> ConfigurationError:
        """``<owner>.<name> must be <expected>, got <value!r>``."""
        return ConfigurationError(f"{self.owner}.{name} must be {expected}, got {value!r}")

    def int_in(self, low: int, high: int | None = None) -> Validator:
        """An int from ``low`` to ``high`` (inclusive; no upper bound when ``None``)."""

        def check(_inst: Any, attr: Any, value: Any) -> None:
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
                or (high is not None and value > high)
            ):
                expected = f"an int >= {low}" if high is None else f"an int from {low} to {high}"
                raise self.error(attr.name, expected, value)

        return check

    @staticmethod
    def optional(check: Validator) -> Validator:
        """``None``, or a value ``check`` accepts."""

        def inner(inst: Any, attr: Any, value: Any) -> None:
            if value is not None:
                check(inst, attr, value)

        return inner

    def positive_number(self, _inst: Any, attr: Any, value: Any) -> None:
        """A finite int or float > 0 (NaN and infinity are refused)."""
        self._number(attr.name, value, low=0, strict=True)

    def non_negative_number(self, _inst: Any, attr: Any, value: Any) -> None:
        """A finite int or float >= 0 (NaN and infinity are refused)."""
        self._number(attr.name, value, low=0, strict=False)

    def _number(self, name: str, value: Any, *, low: int, strict: bool) -> None:
        bound = f"> {low}" if strict else f">= {low}"
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (value > low if strict else value >= low)  # NaN compares false
        ):
            raise self.error(name, f"a number {bound}", value)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(name, f"a finite number {bound}", value)

    def optional_text(self, _inst: Any, attr: Any, value: Any) -> None:
        """``None`` or a non-empty str; the message never repeats the value."""
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"{self.owner}.{attr.name} must be a non-empty str or None")

    def host(self, _inst: Any, attr: Any, value: Any) -> None:
        """A host name or address: a non-empty str without whitespace or ``/``."""
        if not isinstance(value, str) or not value or any(c.isspace() for c in value) or "/" in value:
            raise self.error(attr.name, "a host name or address", value)

    def choice(self, *allowed: str) -> Validator:
        """One of ``allowed``."""

        def check(_inst: Any, attr: Any, value: Any) -> None:
            if value not in allowed:
                raise self.error(attr.name, " or ".join(repr(a) for a in allowed), value)

        return check

    def is_bool(self, _inst: Any, attr: Any, value: Any) -> None:
        """``True`` or ``False`` (not an int)."""
        if not isinstance(value, bool):
            raise self.error(attr.name, "a bool", value)
