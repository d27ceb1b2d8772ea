"""Deprecated import path of dotmac-events: import ``dotmac.events`` instead.

Code written against the seed imports from ``dotmac_shared.events``. This package
keeps that working while it moves:

- importing it emits one :class:`DeprecationWarning` that names ``dotmac.events``;
- every name of ``dotmac.events`` is re-exported, the plugin-owned ones
  (``RedisConfig``, ``create_kafka_bus``, ``MemoryConfig``, ...) resolved from the
  installed plugin exactly as ``dotmac.events`` resolves them;
- the seed's renamed factories (``create_memory_event_bus``, ``create_redis_event_bus``,
  ``create_kafka_event_bus``) are aliases that warn with the new name on each use;
- names whose objects have no equivalent of the same shape (``EventRecord``,
  ``RedisEventAdapter``, ...) are not aliased: importing or using one raises an
  ``ImportError`` that says what replaces it, because an alias that behaved differently
  would break silently instead.

Only the package itself is provided: the seed's submodules
(``dotmac_shared.events.core.models``, ``dotmac_shared.events.adapters.redis_adapter``,
...) held those unaliased classes and are not recreated.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import dotmac.events as _events
from dotmac.events import *  # noqa: F403 - the whole public API, under the old path
from dotmac.events import EventBus, create_bus
from dotmac.events.errors import ConfigurationError

_NEW_PATH = "dotmac.events"

# Seed code runs this at import; the warnings module attributes a module-level warning
# with stacklevel=2 to the importing module (it skips the import machinery's frames).
warnings.warn(
    f"dotmac_shared.events is deprecated; import {_NEW_PATH} instead "
    f'(pip install "dotmac-events", then e.g. from {_NEW_PATH} import Event, create_bus)',
    DeprecationWarning,
    stacklevel=2,
)

__all__ = list(_events.__all__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _renamed(new: str) -> Callable[[_F], _F]:
    def decorate(func: _F) -> _F:
        message = f"dotmac_shared.events.{func.__name__} is deprecated; use {_NEW_PATH}.{new}"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            return func(*args, **kwargs)

        wrapper.__doc__ = f"Deprecated alias: {message}."
        return wrapper  # type: ignore[return-value]

    return decorate


@_renamed("create_memory_bus(MemoryConfig(...))")
def create_memory_event_bus(**bus_options: Any) -> EventBus:
    return _events.create_memory_bus(**bus_options)  # type: ignore[no-any-return]


@_renamed('create_bus("redis://host:port/db")')
def create_redis_event_bus(connection_string: str, **bus_options: Any) -> EventBus:
    # create_bus would take any URL; this name promised Redis, so another scheme is a
    # mistake to report rather than a different broker to connect to.
    if not isinstance(connection_string, str) or not connection_string.startswith(("redis://", "rediss://")):
        raise ConfigurationError(
            f"create_redis_event_bus needs a redis:// or rediss:// URL, got {_scheme_of(connection_string)!r}"
        )
    return create_bus(connection_string, **bus_options)


@_renamed("create_kafka_bus(KafkaConfig(bootstrap_servers=...))")
def create_kafka_event_bus(bootstrap_servers: str, **bus_options: Any) -> EventBus:
    config = _events.KafkaConfig(bootstrap_servers=bootstrap_servers)
    return _events.create_kafka_bus(config, **bus_options)  # type: ignore[no-any-return]


def _scheme_of(value: object) -> str:
    # Only the scheme is echoed back: the rest of a URL may carry a password.
    if isinstance(value, str):
        scheme, sep, _ = value.partition("://")
        return f"{scheme}://..." if sep else "a value without a scheme"
    return type(value).__name__


_REPLACED = {
    "EventRecord": "Event(topic=..., payload=..., key=..., tenant_id=...); the seed's data is "
    "payload and its event_type is metadata.event_type",
    "ConsumerRecord": "the Event a handler receives (event.metadata and event.headers)",
    "PublishResult": "nothing: await bus.publish(event) returns once the broker accepted it "
    "and raises a PublishError subclass otherwise",
    "SubscriptionError": "EventBusError (every error of the bus) or TransportError (a broker failure)",
    "RedisEventAdapter": 'create_bus("redis://host:port/db") (pip install "dotmac-events[redis]")',
    "KafkaEventAdapter": 'create_bus("kafka://host:9092") (pip install "dotmac-events[kafka]")',
    "MemoryEventAdapter": 'create_bus("memory://") (pip install "dotmac-events[memory]")',
    "EventBusSDK": "the EventBus that create_bus() returns",
}


def __getattr__(name: str) -> Any:
    replacement = _REPLACED.get(name)
    if replacement is not None:
        # ImportError, not AttributeError: ``from ... import`` would replace an
        # AttributeError's message with its own "cannot import name".
        raise ImportError(
            f"dotmac_shared.events.{name} has no equivalent of the same shape in {_NEW_PATH}; "
            f"use {replacement} (see the migration guide)",
            name=__name__,
        )
    try:
        # Plugin-owned names resolve (or name the missing plugin) as in the new package.
        return getattr(_events, name)
    except AttributeError:
        raise AttributeError(f"module 'dotmac_shared.events' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *dir(_events)})
