"""dotmac-events-rabbitmq: the ``amqp://`` and ``amqps://`` transport on RabbitMQ (aio-pika).

This module holds only the plugin's hook implementations and its public names.
"""

from __future__ import annotations

from typing import Any

from dotmac.events import EventBus, TransportSpec, create_bus, hookimpl
from dotmac.events.registry import Registry

from ._consumer import KEY_HEADER
from .config import RabbitMQConfig, parse_amqp_url
from .transport import CAPABILITIES, RabbitMQTransport

__all__ = ["KEY_HEADER", "RabbitMQConfig", "RabbitMQTransport", "create_rabbitmq_bus"]


def create_rabbitmq_bus(config: RabbitMQConfig | None = None, **bus_options: Any) -> EventBus:
    """A bus on RabbitMQ (the same as ``create_bus(RabbitMQConfig(...))``)."""
    return create_bus(config or RabbitMQConfig(), **bus_options)


@hookimpl
def dotmac_events_register_transports(register: Registry) -> None:
    register.add_transport(
        TransportSpec(
            name="rabbitmq",
            schemes=("amqp", "amqps"),
            config_class=RabbitMQConfig,
            factory=RabbitMQTransport,
            capabilities=CAPABILITIES,
            parse_url=parse_amqp_url,
            description="RabbitMQ: a topic exchange, a quorum queue per consumer group (aio-pika)",
        )
    )
