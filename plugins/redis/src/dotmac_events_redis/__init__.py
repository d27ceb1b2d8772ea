"""dotmac-events-redis: the ``redis://`` and ``rediss://`` transport on Redis Streams
(``redis+cluster://`` and ``rediss+cluster://`` for Redis Cluster).

This module holds only the plugin's hook implementations and its public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dotmac.events import EventBus, Transport, TransportSpec, create_bus, hookimpl
from dotmac.events.registry import Registry

from .config import RedisConfig, parse_redis_url
from .transport import CAPABILITIES, DATA_FIELD, KEY_FIELD, RedisTransport

if TYPE_CHECKING:
    from dotmac.events.doctor import DoctorCheck

__all__ = ["DATA_FIELD", "KEY_FIELD", "RedisConfig", "RedisTransport", "create_redis_bus"]


def create_redis_bus(config: RedisConfig | None = None, **bus_options: Any) -> EventBus:
    """A bus on Redis Streams (the seed's name for ``create_bus(RedisConfig(...))``)."""
    return create_bus(config or RedisConfig(), **bus_options)


@hookimpl
def dotmac_events_register_transports(register: Registry) -> None:
    register.add_transport(
        TransportSpec(
            name="redis",
            schemes=("redis", "rediss", "redis+cluster", "rediss+cluster"),
            config_class=RedisConfig,
            factory=RedisTransport,
            capabilities=CAPABILITIES,
            parse_url=parse_redis_url,
            description="Redis Streams (and Redis Cluster): consumer groups with pending-entry reclaim",
        )
    )


@hookimpl
def dotmac_events_doctor_checks(transport: Transport) -> Sequence[DoctorCheck] | None:
    from .doctor import checks

    return checks(transport)
