"""Conformance cases aimed at the transport contract itself.

Part of :class:`~dotmac.events.testing.TransportConformance`. These talk to
``bus.transport`` directly where the contract is about the transport alone (what it
hands to the sink, how many unacknowledged messages it hands out), and through the
bus where the user would notice (a released event comes back promptly, an idle
subscription wakes up, headers arrive exactly as sent). ``core/tests/test_kit.py``
proves that each case fails on a deliberately broken transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..event import Event
from ..transport import Delivery, SubscriptionSpec
from .collect import Collector, wait_for

if TYPE_CHECKING:
    from ..bus import EventBus
    from ..transport import Capabilities

__all__ = ["ContractConformance"]


class ContractConformance:
    """Mixed into :class:`TransportConformance`; uses its plumbing.

    ``prompt_redelivery`` bounds how long a released event may take to reach another
    live member (seconds); ``idle_seconds`` is how long the idle case waits, longer
    than typical broker poll and expiry windows.
    """

    timeout: float
    prompt_redelivery: float = 10.0
    idle_seconds: float = 6.0

    # Provided by TransportConformance.
    def create_bus(self) -> EventBus:
        raise NotImplementedError

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        raise NotImplementedError

    def buses(self, n: int = 1) -> contextlib.AbstractAsyncContextManager[list[EventBus]]:
        raise NotImplementedError

    def event(self, topic: str, i: int, **kwargs: Any) -> Event:
        raise NotImplementedError

    def require(self, **flags: Any) -> None:
        raise NotImplementedError

    def topic(self, name: str) -> str:
        raise NotImplementedError

    def group(self, name: str) -> str:
        raise NotImplementedError

    def _capabilities(self) -> Capabilities:
        raise NotImplementedError

    # -- the transport alone --------------------------------------------------------------
    def test_prefetch_bounds_unacknowledged_deliveries(self) -> None:
        """With ``prefetch=3`` and nothing acked, the transport hands out exactly 3
        messages; each ack lets exactly one more through."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(1) as (bus,):
                topic = self.topic("prefetch")
                held: list[Delivery] = []

                async def sink(delivery: Delivery) -> None:
                    held.append(delivery)

                spec = SubscriptionSpec(
                    topics=(topic,), group=self.group("prefetch"), consumer_name="kit-prefetch", prefetch=3
                )
                sub = await bus.transport.subscribe(spec, sink)
                try:
                    await bus.publish_many([self.event(topic, i) for i in range(10)])
                    await wait_for(lambda: len(held) >= 3, self.timeout, what="the first 3 deliveries")
                    await self._settle_quietly(held, 3)
                    assert len(held) == 3, (
                        f"prefetch=3 but the transport handed out {len(held)} un-acked messages"
                    )
                    await held[0].ack()
                    await wait_for(lambda: len(held) >= 4, self.timeout, what="a delivery after one ack")
                    await self._settle_quietly(held, 4)
                    assert len(held) == 4, f"one ack let {len(held) - 3} more messages through, expected 1"
                    for delivery in held[1:]:
                        await delivery.ack()
                finally:
                    await sub.stop()

        self.run(scenario)

    async def _settle_quietly(self, held: list[Delivery], expected: int) -> None:
        # Give a transport that would over-deliver the chance to do it: a few fetch
        # rounds of the broker, bounded.
        deadline = time.monotonic() + min(1.0, self.timeout)
        while time.monotonic() < deadline and len(held) == expected:  # noqa: ASYNC110 - a bounded wait for what must not happen
            await asyncio.sleep(0.05)

    # -- through the bus ----------------------------------------------------------------------
    def test_a_released_event_is_redelivered_promptly(self) -> None:
        """An event released by a stopping member reaches a live member within
        ``prompt_redelivery`` seconds, whatever the broker's own redelivery timers."""
        self.require(consumer_groups=True)

        async def scenario() -> None:
            async with self.buses(2) as (producer, survivor_bus):
                topic = self.topic("release")
                group = self.group("release")
                started = asyncio.Event()

                async def blocked(event: Event) -> None:
                    started.set()
                    await asyncio.Event().wait()

                survivor = Collector()
                doomed_bus = self.create_bus()
                await doomed_bus.start()
                try:
                    doomed = await doomed_bus.subscribe(topic, blocked, group=group)
                    await producer.publish(self.event(topic, 1))
                    await asyncio.wait_for(started.wait(), self.timeout)
                    await survivor_bus.subscribe(topic, survivor, group=group)
                    released_at = time.monotonic()
                    await doomed.stop(timeout=0.05)
                    assert doomed.released >= 1
                finally:
                    await doomed_bus.close(timeout=0.05)
                await survivor.wait_count(1, self.timeout)
                took = time.monotonic() - released_at
                assert took <= self.prompt_redelivery, (
                    f"the released event took {took:.1f}s to reach a live member "
                    f"(prompt_redelivery={self.prompt_redelivery}s)"
                )

        self.run(scenario)

    def test_an_idle_subscription_receives_again(self) -> None:
        """After ``idle_seconds`` without traffic, a subscription still receives."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("idle")
                seen = Collector()
                group = self.group("idle") if self._capabilities().consumer_groups else None
                await consumer.subscribe(topic, seen, group=group)
                await producer.publish(self.event(topic, 1))
                await seen.wait_count(1, self.timeout)
                await asyncio.sleep(self.idle_seconds)  # the scenario is the silence itself
                await producer.publish(self.event(topic, 2))
                await seen.wait_count(2, self.timeout)
                assert seen.payloads("i") == [1, 2]

        self.run(scenario)

    def test_header_values_arrive_exactly_as_sent(self) -> None:
        """Empty values, surrounding whitespace, non-ASCII and long values survive, and
        nothing the broker adds appears among the user headers."""

        async def scenario() -> None:
            async with self.buses(2) as (consumer, producer):
                topic = self.topic("headers")
                seen = Collector()
                await consumer.subscribe(topic, seen)
                headers = {
                    "x-empty": "",
                    "x-space": "  padded\tvalue  ",
                    "x-unicode": "Zoë ☕ 日本語 \u00a0nbsp",
                    "x-long": "v" * 8000,
                    "X-Mixed-Case": "kept",
                }
                await producer.publish(self.event(topic, 1, headers=headers))
                await seen.wait_count(1, self.timeout)
                got = dict(seen.events[0].headers)
                assert got == headers, {
                    "missing or changed": {k: v[:40] for k, v in headers.items() if got.get(k) != v},
                    "added": sorted(set(got) - set(headers)),
                }

        self.run(scenario)
