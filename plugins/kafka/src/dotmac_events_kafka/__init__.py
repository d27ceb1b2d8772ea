"""dotmac-events-kafka: the ``kafka://`` transport on aiokafka.

This module holds only the plugin's hook implementations and its public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from dotmac.events import EventBus, Transport, TransportSpec, create_bus, hookimpl
from dotmac.events.errors import ConfigurationError
from dotmac.events.registry import Registry

from .config import KafkaConfig
from .transport import CAPABILITIES, KafkaTransport

if TYPE_CHECKING:
    from dotmac.events.doctor import DoctorCheck

__all__ = ["KafkaConfig", "KafkaTransport", "create_kafka_bus"]


def _parse_url(url: str) -> dict[str, Any]:
    """``kafka://[user:password@]host:port[,host:port]`` -> KafkaConfig fields."""
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        raise ConfigurationError("kafka:// URLs take no path; put settings in the query string")
    netloc = parts.netloc
    fields: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if user:
            fields["sasl_username"] = unquote(user)
        if password:
            fields["sasl_password"] = unquote(password)
        # Credentials in the URL mean SASL; the query string may still pick SASL_SSL.
        fields["security_protocol"] = "SASL_PLAINTEXT"
    if netloc:
        fields["bootstrap_servers"] = netloc
    return fields


def create_kafka_bus(config: KafkaConfig | None = None, **bus_options: Any) -> EventBus:
    """A bus on the Kafka transport (the seed's name for ``create_bus("kafka://...")``)."""
    return create_bus(config or KafkaConfig(), **bus_options)


@hookimpl
def dotmac_events_register_transports(register: Registry) -> None:
    register.add_transport(
        TransportSpec(
            name="kafka",
            schemes=("kafka",),
            config_class=KafkaConfig,
            factory=KafkaTransport,
            capabilities=CAPABILITIES,
            parse_url=_parse_url,
            description="Apache Kafka and Kafka-protocol brokers (aiokafka)",
        )
    )


@hookimpl
def dotmac_events_doctor_checks(transport: Transport) -> Sequence[DoctorCheck] | None:
    from .doctor import checks

    return checks(transport)
