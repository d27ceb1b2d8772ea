from __future__ import annotations

import inspect

import pytest

from dotmac.events import errors
from dotmac.events.errors import (
    EventBusError,
    NonRetryableError,
    PluginNotFoundError,
    QueueFullError,
    RequestTimeoutError,
    TransportError,
    TransportUnavailableError,
)


def test_every_error_derives_from_the_root() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) == len(errors.__all__)
    for cls in classes:
        assert issubclass(cls, EventBusError), cls


def test_plugin_not_found_names_the_install_command() -> None:
    exc = PluginNotFoundError("the 'redis' URL scheme", extra="redis", known=("memory",))
    assert 'pip install "dotmac-events[redis]"' in str(exc)
    assert "available: memory" in str(exc)
    assert isinstance(exc, ImportError)


def test_retriable_flags() -> None:
    assert TransportUnavailableError("down").retriable is True
    assert QueueFullError("full").retriable is True
    assert TransportError("denied").retriable is False
    assert TransportError("flaky", retriable=True).retriable is True


def test_timeouts_are_builtin_timeouts() -> None:
    with pytest.raises(TimeoutError):
        raise RequestTimeoutError("late")


def test_non_retryable_is_part_of_the_tree() -> None:
    assert issubclass(NonRetryableError, EventBusError)
