"""dotmac-events-nats: the ``nats://`` transport on NATS JetStream.

This module holds only the plugin's hook implementations and its public names.
"""

from __future__ import annotations

from typing import Any

from dotmac.events import EventBus, TransportSpec, create_bus, hookimpl
from dotmac.events.registry import Registry

from .config import NatsConfig, parse_nats_url
from .subjects import KEY_HEADER
from .transport import CAPABILITIES, NatsTransport

__all__ = ["KEY_HEADER", "NatsConfig", "NatsTransport", "create_nats_bus"]


def create_nats_bus(config: NatsConfig | None = None, **bus_options: Any) -> EventBus:
    """A bus on NATS JetStream (``create_bus(NatsConfig(...))``)."""
    return create_bus(config or NatsConfig(), **bus_options)


@hookimpl
def dotmac_events_register_transports(register: Registry) -> None:
    register.add_transport(
        TransportSpec(
            name="nats",
            schemes=("nats",),
            config_class=NatsConfig,
            factory=NatsTransport,
            capabilities=CAPABILITIES,
            parse_url=parse_nats_url,
            description="NATS JetStream: durable pull consumers, NAK for prompt redelivery",
        )
    )
