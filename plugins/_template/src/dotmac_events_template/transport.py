"""Fill in each method; docs/adapters.md says what each must guarantee."""

from __future__ import annotations

from collections.abc import Sequence

from dotmac.events import Capabilities, Message, SubscriptionSpec, Transport, TransportSubscription
from dotmac.events.transport import DeliverySink

from .config import TemplateConfig

# Claim only what the broker really does; the conformance kit skips the rest.
CAPABILITIES = Capabilities(consumer_groups=False, request_reply=True)


class TemplateTransport(Transport):
    name = "template"
    capabilities = CAPABILITIES

    def __init__(self, config: TemplateConfig) -> None:
        self.config = config

    async def start(self) -> None:
        raise NotImplementedError("connect to the broker")

    async def close(self) -> None:
        raise NotImplementedError("flush, then release every connection and task")

    async def publish(self, messages: Sequence[Message]) -> None:
        raise NotImplementedError("store every message or raise a TransportError")

    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        raise NotImplementedError("return once live; await sink(delivery) per message")
