"""What plugins register: transports, codecs and retry policies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from attrs import field, frozen

from .errors import ConfigurationError, PluginNotFoundError
from .transport import Capabilities, Transport

if TYPE_CHECKING:
    from .codec import Codec
    from .options import ConsumerOptions
    from .retry import RetryPolicy

__all__ = ["FIRST_PARTY", "KNOWN_EXTRAS", "CodecSpec", "FirstPartyPlugin", "Registry", "TransportSpec"]


@frozen
class FirstPartyPlugin:
    """A plugin distribution of this project, named here so that a missing one's error
    can say which extra of ``dotmac-events`` installs it.

    ``provides``: the URL schemes, transport and codec names it registers; ``names``:
    the attributes ``dotmac.events`` resolves lazily from its ``module``.
    """

    extra: str
    module: str
    provides: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


# The one table of first-party plugins.
FIRST_PARTY: tuple[FirstPartyPlugin, ...] = (
    FirstPartyPlugin("memory", "dotmac_events_memory", ("memory",), ("MemoryConfig", "create_memory_bus")),
    FirstPartyPlugin(
        "redis", "dotmac_events_redis", ("redis", "rediss"), ("RedisConfig", "create_redis_bus")
    ),
    FirstPartyPlugin("kafka", "dotmac_events_kafka", ("kafka",), ("KafkaConfig", "create_kafka_bus")),
    FirstPartyPlugin("avro", "dotmac_events_avro", ("avro",), ("AvroCodec",)),
    FirstPartyPlugin("otel", "dotmac_events_otel", ("otel",)),
    FirstPartyPlugin("nats", "dotmac_events_nats", ("nats",), ("NatsConfig", "create_nats_bus")),
    FirstPartyPlugin("outbox", "dotmac_events_outbox"),
    FirstPartyPlugin(
        "rabbitmq",
        "dotmac_events_rabbitmq",
        ("amqp", "amqps", "rabbitmq"),
        ("RabbitMQConfig", "create_rabbitmq_bus"),
    ),
    FirstPartyPlugin("ops", "dotmac_events_ops"),
)

KNOWN_EXTRAS: Mapping[str, str] = {name: plugin.extra for plugin in FIRST_PARTY for name in plugin.provides}
"""Scheme, transport or codec name -> the extra of ``dotmac-events`` that installs it."""


def _schemes(value: Any) -> tuple[str, ...]:
    return tuple(s.lower() for s in value)


@frozen
class TransportSpec:
    """A transport as registered by a plugin (see ``dotmac_events_register_transports``)."""

    name: str
    schemes: tuple[str, ...] = field(converter=_schemes)
    config_class: type[Any]
    factory: Callable[[Any], Transport]
    capabilities: Capabilities = field(factory=Capabilities)
    parse_url: Callable[[str], dict[str, Any]] | None = None
    description: str = ""


@frozen
class CodecSpec:
    """A codec as registered by a plugin (see ``dotmac_events_register_codecs``)."""

    name: str
    content_type: str
    factory: Callable[..., Codec]
    description: str = ""


class Registry:
    """Collects registrations; passed as ``register`` to the registration hooks."""

    def __init__(self) -> None:
        self.transports: dict[str, TransportSpec] = {}
        self.schemes: dict[str, TransportSpec] = {}
        self.codecs: dict[str, CodecSpec] = {}
        self.codecs_by_type: dict[str, CodecSpec] = {}
        self.retry_policies: dict[str, Callable[[ConsumerOptions], RetryPolicy]] = {}
        self.owner: dict[tuple[str, str], str] = {}
        self._current = "?"

    # -- called by plugins -------------------------------------------------------------
    def add_transport(self, spec: TransportSpec) -> None:
        for scheme in spec.schemes:
            if scheme in self.schemes:
                other = self.owner[("scheme", scheme)]
                raise ConfigurationError(
                    f"URL scheme {scheme!r} is registered by both {other!r} and {self._current!r}"
                )
        self.transports[spec.name] = spec
        for scheme in spec.schemes:
            self.schemes[scheme] = spec
            self.owner[("scheme", scheme)] = self._current
        self.owner[("transport", spec.name)] = self._current

    def add_codec(self, spec: CodecSpec) -> None:
        if spec.name in self.codecs:
            other = self.owner[("codec", spec.name)]
            raise ConfigurationError(
                f"codec {spec.name!r} is registered by both {other!r} and {self._current!r}"
            )
        self.codecs[spec.name] = spec
        self.codecs_by_type[spec.content_type.lower()] = spec
        self.owner[("codec", spec.name)] = self._current

    def add_retry_policy(self, name: str, factory: Callable[[ConsumerOptions], RetryPolicy]) -> None:
        if name in self.retry_policies:
            other = self.owner[("retry_policy", name)]
            raise ConfigurationError(
                f"retry policy {name!r} is registered by both {other!r} and {self._current!r}"
            )
        self.retry_policies[name] = factory
        self.owner[("retry_policy", name)] = self._current

    # -- used by the core ---------------------------------------------------------------
    def transport_for_scheme(self, scheme: str) -> TransportSpec:
        try:
            return self.schemes[scheme.lower()]
        except KeyError:
            raise PluginNotFoundError(
                f"the {scheme!r} URL scheme",
                extra=KNOWN_EXTRAS.get(scheme.lower()),
                known=tuple(self.schemes),
            ) from None

    def transport_named(self, name: str) -> TransportSpec:
        spec = self.transports.get(name) or self.schemes.get(name)
        if spec is None:
            raise PluginNotFoundError(
                f"the {name!r} transport", extra=KNOWN_EXTRAS.get(name), known=tuple(self.transports)
            )
        return spec

    def transport_for_config(self, config: object) -> TransportSpec:
        for spec in self.transports.values():
            if type(config) is spec.config_class:
                return spec
        raise ConfigurationError(f"no installed transport takes a {type(config).__name__} config")

    def codec(self, name: str) -> CodecSpec:
        try:
            return self.codecs[name]
        except KeyError:
            raise PluginNotFoundError(
                f"the {name!r} codec", extra=KNOWN_EXTRAS.get(name), known=tuple(self.codecs)
            ) from None

    def retry_policy(self, name: str) -> Callable[[ConsumerOptions], RetryPolicy]:
        try:
            return self.retry_policies[name]
        except KeyError:
            raise PluginNotFoundError(
                f"the {name!r} retry policy", known=tuple(self.retry_policies)
            ) from None
