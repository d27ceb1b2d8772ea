"""dotmac-events: a transport-agnostic, asyncio-native event bus.

>>> from dotmac.events import Event, create_bus
>>> bus = create_bus("memory://")

Names owned by plugins (``RedisConfig``, ``create_kafka_bus``, ...) are imported from
the installed plugin on first use; when it is missing the error names the command
that installs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .batch import BatchHandler, BatchSubscription
from .bus import EventBus, PayloadValidator
from .codec import Codec, JsonCodec, RawCodec
from .config import create_bus, load_toml_config
from .delay import DelayScheduler
from .dlq import DeadLetter, DeadLetterQueue
from .errors import (
    AuthenticationError,
    BusStateError,
    CodecError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    EventBusError,
    EventBusTimeoutError,
    HandlerTimeoutError,
    HeaderValidationError,
    InvalidTenantError,
    InvalidTopicError,
    MessageTooLargeError,
    NonRetryableError,
    PartialPublishError,
    PayloadValidationError,
    PluginNotFoundError,
    PublishError,
    QueueFullError,
    RemoteHandlerError,
    RequestTimeoutError,
    SchemaValidationError,
    TransportError,
    TransportUnavailableError,
    UnsupportedOperationError,
    ValidationError,
)
from .event import Event, EventMetadata
from .observe import ConsumeInfo, PublishInfo
from .options import ConsumerOptions, create_exponential_retry_options, create_fixed_retry_options
from .plugins import hookimpl
from .registry import FIRST_PARTY, CodecSpec, Registry, TransportSpec
from .retry import ExponentialBackoff, FixedDelay, NoRetry, RetryPolicy
from .runner import Subscription
from .transport import (
    Capabilities,
    Delivery,
    GroupInfo,
    Message,
    SubscriptionSpec,
    Transport,
    TransportSubscription,
)

if TYPE_CHECKING:
    from .app import App

__all__ = [
    "App",
    "AuthenticationError",
    "BatchHandler",
    "BatchSubscription",
    "BusStateError",
    "Capabilities",
    "Codec",
    "CodecError",
    "CodecSpec",
    "ConfigurationError",
    "ConsumeInfo",
    "ConsumerOptions",
    "DeadLetter",
    "DeadLetterQueue",
    "DecodeError",
    "DelayScheduler",
    "Delivery",
    "EncodeError",
    "Event",
    "EventBus",
    "EventBusError",
    "EventBusTimeoutError",
    "EventMetadata",
    "ExponentialBackoff",
    "FixedDelay",
    "GroupInfo",
    "HandlerTimeoutError",
    "HeaderValidationError",
    "InvalidTenantError",
    "InvalidTopicError",
    "JsonCodec",
    "RawCodec",
    "Message",
    "MessageTooLargeError",
    "NoRetry",
    "NonRetryableError",
    "PartialPublishError",
    "PayloadValidationError",
    "PayloadValidator",
    "PluginNotFoundError",
    "PublishError",
    "PublishInfo",
    "QueueFullError",
    "Registry",
    "RemoteHandlerError",
    "RequestTimeoutError",
    "RetryPolicy",
    "SchemaValidationError",
    "Subscription",
    "SubscriptionSpec",
    "Transport",
    "TransportError",
    "TransportSpec",
    "TransportSubscription",
    "TransportUnavailableError",
    "UnsupportedOperationError",
    "ValidationError",
    "create_bus",
    "create_dotmac_observability_hooks",
    "create_exponential_retry_options",
    "create_fixed_retry_options",
    "hookimpl",
    "load_toml_config",
]

# name -> (module, extra of dotmac-events that installs it)
_LAZY: dict[str, tuple[str, str]] = {name: (p.module, p.extra) for p in FIRST_PARTY for name in p.names}


def __getattr__(name: str) -> Any:
    if name == "App":
        # The service framework loads on first use: importing the bus alone stays lean.
        from .app import App

        return App
    if name == "create_dotmac_observability_hooks":
        from .metrics import create_dotmac_observability_hooks

        return create_dotmac_observability_hooks
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'dotmac.events' has no attribute {name!r}")
    module_name, extra = target
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and not module_name.startswith(exc.name):
            raise
        raise PluginNotFoundError(f"{name} (module {module_name})", extra=extra) from None
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "App", "create_dotmac_observability_hooks"])
