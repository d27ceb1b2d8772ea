"""Configuration of the memory transport."""

from __future__ import annotations

from typing import Any, Literal

from attrs import field, frozen

from dotmac.events.errors import ConfigurationError

__all__ = ["MemoryConfig"]


def _positive_int(_inst: Any, attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"MemoryConfig.{attr.name} must be an int >= 1, got {value!r}")


def _non_negative_int(_inst: Any, attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"MemoryConfig.{attr.name} must be an int >= 0, got {value!r}")


def _positive(_inst: Any, attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"MemoryConfig.{attr.name} must be > 0, got {value!r}")


def _overflow(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in ("wait", "fail"):
        raise ConfigurationError(f"MemoryConfig.overflow must be 'wait' or 'fail', got {value!r}")


def _name(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ConfigurationError(f"MemoryConfig.name must be a non-empty str, got {value!r}")


@frozen
class MemoryConfig:
    """``memory://NAME?max_queue_size=...``.

    - ``name``: buses naming the same broker in one process share it.
    - ``max_queue_size``: events waiting per consumer group (or broadcast subscription)
      and topic; a full queue makes ``publish`` wait or fail, per ``overflow``.
    - ``overflow``: ``"wait"`` (up to ``publish_timeout`` seconds, then
      ``QueueFullError``) or ``"fail"`` (``QueueFullError`` at once).
    - ``retention``: events kept per topic for ``start_from="earliest"`` and for
      reading back (DLQ listing); 0 keeps none.
    - ``enable_persistence``: append every published message to a JSON-lines log at
      ``persistence_path`` (default ``dotmac-events-NAME.jsonl``) for inspection and
      replay. It is a debugging aid, not durability.
    """

    name: str = field(default="default", validator=_name)
    max_queue_size: int = field(default=10_000, validator=_positive_int)
    overflow: Literal["wait", "fail"] = field(default="wait", validator=_overflow)
    publish_timeout: float = field(default=30.0, validator=_positive)
    retention: int = field(default=10_000, validator=_non_negative_int)
    enable_persistence: bool = False
    persistence_path: str | None = None
    persistence_flush: bool = True
