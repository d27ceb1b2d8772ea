"""Configuration of the memory transport."""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Literal

from attrs import field, frozen

from dotmac.events.errors import ConfigurationError

__all__ = ["MemoryConfig", "default_persistence_dir", "persistence_file"]

log = logging.getLogger(__name__)


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
      ``persistence_path`` for inspection and replay. It is a debugging aid, not
      durability. Unset, the log is ``NAME.jsonl`` in :func:`default_persistence_dir`
      (under the system temp directory), never in the working directory.
    """

    name: str = field(default="default", validator=_name)
    max_queue_size: int = field(default=10_000, validator=_positive_int)
    overflow: Literal["wait", "fail"] = field(default="wait", validator=_overflow)
    publish_timeout: float = field(default=30.0, validator=_positive)
    retention: int = field(default=10_000, validator=_non_negative_int)
    enable_persistence: bool = False
    persistence_path: str | None = None
    persistence_flush: bool = True


def default_persistence_dir() -> Path:
    """The directory of persistence logs whose ``persistence_path`` is unset.

    ``<temp>/dotmac-events-<uid>`` on POSIX and ``<temp>/dotmac-events`` elsewhere, where
    ``<temp>`` is :func:`tempfile.gettempdir` (``$TMPDIR``, ``/tmp``, ``%TEMP%``). The
    temp directory keeps a test run or a demo from leaving files in the working tree and
    lets the system clear old logs; the user id keeps users of one machine apart.
    """
    getuid = getattr(os, "getuid", None)
    suffix = f"-{getuid()}" if getuid is not None else ""
    return Path(tempfile.gettempdir()) / f"dotmac-events{suffix}"


def _private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"MemoryConfig.persistence_path is unset and {str(path)!r} cannot be created ({exc.strerror});"
            " set persistence_path to where the log should go"
        ) from exc
    getuid = getattr(os, "getuid", None)
    if getuid is None:  # pragma: no cover - Windows: the temp directory is per user already
        return path
    # The temp directory is shared: a directory someone else made (or a symlink planted
    # there) could read or redirect the log, so only one of our own is used.
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != getuid():
        raise ConfigurationError(
            f"MemoryConfig.persistence_path is unset and {str(path)!r} is not a directory owned by"
            " this user; set persistence_path to where the log should go"
        )
    return path


def persistence_file(config: MemoryConfig) -> Path:
    """Where the broker of ``config`` appends its persistence log (the directory exists)."""
    if config.persistence_path is not None:
        return Path(config.persistence_path)
    # A broker name may hold any character (``memory://a/b``); the file name may not.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", config.name)
    path = _private_dir(default_persistence_dir()) / f"{safe}.jsonl"
    log.info("memory broker %r appends its persistence log to %s", config.name, path)
    return path
