"""The conformance kit catches broken transports: each case below runs one kit test
against a memory transport broken in one way, and expects it to fail."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from attrs import evolve

from dotmac.events import Delivery, EventBus, GroupInfo, Message, SubscriptionSpec, TransportSubscription
from dotmac.events.plugins import get_plugin_manager, get_registry
from dotmac.events.testing import TransportConformance
from dotmac.events.transport import Capabilities, DeliverySink

pytest.importorskip("dotmac_events_memory")

from dotmac_events_memory import MemoryConfig  # noqa: E402
from dotmac_events_memory.transport import CAPABILITIES as MEMORY_CAPABILITIES  # noqa: E402
from dotmac_events_memory.transport import MemoryTransport  # noqa: E402


class _Forgetful(Delivery):
    """Acks on arrival, before the handler ran; its release is then a no-op."""

    def __init__(self, inner: Delivery) -> None:
        self.message = inner.message
        self.delivery_count = inner.delivery_count
        self.ordering_key = inner.ordering_key
        self._inner = inner

    async def ack(self) -> None:
        pass

    async def release(self) -> None:
        pass


class _Broken(MemoryTransport):
    flaw = "none"

    async def publish(self, messages: Sequence[Message]) -> None:
        if self.flaw == "drops keys":
            messages = [evolve(m, key=None) for m in messages]
        await super().publish(messages)

    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        if self.flaw == "ignores prefetch":
            spec = evolve(spec, prefetch=1_000_000)
        if self.flaw == "acks before the handler":
            inner_sink = sink

            async def acking_sink(delivery: Delivery) -> None:
                await delivery.ack()
                await inner_sink(_Forgetful(delivery))

            sink = acking_sink
        if self.flaw == "release is a no-op":
            inner = sink

            async def no_release_sink(delivery: Delivery) -> None:
                forgetful = _Forgetful(delivery)
                forgetful.ack = delivery.ack  # type: ignore[method-assign]
                await inner(forgetful)

            sink = no_release_sink
        if self.flaw == "stalls when idle":
            last = [0.0]
            stalled = sink

            async def stalling_sink(delivery: Delivery) -> None:
                now = time.monotonic()
                if last[0] and now - last[0] > 0.3:
                    await asyncio.Event().wait()  # never hands anything over again
                last[0] = now
                await stalled(delivery)

            sink = stalling_sink
        return await super().subscribe(spec, sink)

    async def groups(self, topic: str) -> list[GroupInfo]:
        infos = await super().groups(topic)
        if self.flaw == "lag off by one":
            infos = [evolve(g, lag=None if g.lag is None else g.lag + 1) for g in infos]
        if self.flaw == "counts held events as lag":
            infos = [evolve(g, lag=(g.lag or 0) + (g.pending or 0), pending=0) for g in infos]
        if self.flaw == "lists broadcast readers":
            infos = [*infos, GroupInfo(topic=topic, group="", lag=0)] if infos else infos
        return infos


def _kit(flaw: str) -> TransportConformance:
    class BrokenKit(TransportConformance):
        timeout = 2.0
        scenario_timeout = 15.0
        prompt_redelivery = 2.0
        idle_seconds = 0.5

        def __init__(self) -> None:
            self.name = f"kit-{uuid.uuid4().hex[:8]}"

        def create_bus(self) -> EventBus:
            transport = _Broken(MemoryConfig(name=self.name))
            transport.flaw = flaw
            return EventBus(transport, registry=get_registry(), plugin_manager=get_plugin_manager())

    return BrokenKit()


CASES: list[tuple[str, Callable[[TransportConformance], Any]]] = [
    ("acks before the handler", lambda kit: kit.test_a_released_event_is_redelivered_promptly()),
    ("release is a no-op", lambda kit: kit.test_a_released_event_is_redelivered_promptly()),
    ("ignores prefetch", lambda kit: kit.test_prefetch_bounds_unacknowledged_deliveries()),
    ("drops keys", lambda kit: kit.test_round_trip_preserves_everything()),
    ("stalls when idle", lambda kit: kit.test_an_idle_subscription_receives_again()),
    ("lag off by one", lambda kit: kit.test_group_lag_is_exact_for_a_known_backlog()),
    ("counts held events as lag", lambda kit: kit.test_group_lag_is_exact_for_a_known_backlog()),
    ("lists broadcast readers", lambda kit: kit.test_group_lag_is_exact_for_a_known_backlog()),
]


@pytest.mark.parametrize(("flaw", "case"), CASES, ids=[flaw for flaw, _ in CASES])
def test_the_kit_catches_a_broken_transport(flaw: str, case: Callable[[TransportConformance], Any]) -> None:
    with pytest.raises((AssertionError, asyncio.TimeoutError, TimeoutError)):
        case(_kit(flaw))


@pytest.mark.parametrize(("flaw", "case"), CASES, ids=[f"healthy-{flaw}" for flaw, _ in CASES])
def test_the_same_cases_pass_on_the_healthy_transport(
    flaw: str, case: Callable[[TransportConformance], Any]
) -> None:
    case(_kit("none"))


def test_the_introspection_case_skips_a_transport_without_it() -> None:
    """A third-party transport without ``introspection`` (or without groups) is skipped,
    before any bus is started."""
    for flags in ({"introspection": False}, {"consumer_groups": False}):
        kit = _kit("none")
        capabilities = evolve(MEMORY_CAPABILITIES, **flags)
        kit.create_bus = lambda capabilities=capabilities: _bus_with(capabilities)  # type: ignore[method-assign]
        with pytest.raises(pytest.skip.Exception, match="capability"):
            kit.test_group_lag_is_exact_for_a_known_backlog()


def _bus_with(capabilities: Capabilities) -> EventBus:
    transport = _Broken(MemoryConfig(name=f"kit-{uuid.uuid4().hex[:8]}"))
    transport.capabilities = capabilities
    return EventBus(transport, registry=get_registry(), plugin_manager=get_plugin_manager())
