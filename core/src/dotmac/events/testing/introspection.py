"""Conformance case for consumer-group introspection: ``bus.groups()`` reports exact lag.

Part of :class:`~dotmac.events.testing.TransportConformance`, run when the transport
has ``introspection`` and ``consumer_groups``. The groups are read from a bus that
never subscribed, as an operator's tool would. How the broker counts the events a
member holds without acknowledging them is a fact of the broker, declared by
``groups_held_events``:

- ``"pending"``: they are ``pending`` and out of ``lag`` (memory, Redis, NATS);
- ``"handed_out"``: they are out of ``lag`` and ``pending`` is always ``None``, the
  broker does not count them (RabbitMQ over AMQP);
- ``"lag"``: they stay in ``lag`` and ``pending`` is always ``0``, the broker knows
  only what was committed (Kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal

from ..bus import EventBus
from ..event import Event
from ..options import ConsumerOptions
from ..transport import GroupInfo
from .collect import Collector, wait_groups

__all__ = ["IntrospectionConformance"]


@contextlib.asynccontextmanager
async def _set_on_exit(gate: asyncio.Event) -> AsyncIterator[None]:
    try:
        yield
    finally:
        gate.set()  # before the buses close: they would wait for the held handlers


class IntrospectionConformance:
    """The introspection case; the host class provides buses, topics and ``run``."""

    timeout: float
    groups_held_events: Literal["pending", "handed_out", "lag"] = "pending"
    run: Callable[[Callable[[], Awaitable[None]]], None]
    buses: Callable[[int], AbstractAsyncContextManager[list[EventBus]]]
    topic: Callable[[str], str]
    group: Callable[[str], str]
    event: Callable[..., Event]
    require: Callable[..., None]

    def test_group_lag_is_exact_for_a_known_backlog(self) -> None:
        """Of n events a group consumed m: ``lag`` is n - m; a member holding 3 moves
        them to ``pending`` (see ``groups_held_events``); caught up, lag is 0.
        Broadcast subscriptions are no groups."""
        self.require(introspection=True, consumer_groups=True)
        held_as = self.groups_held_events
        idle_pending = None if held_as == "handed_out" else 0
        n, m, held = 11, 4, 3

        async def scenario() -> None:
            gate = asyncio.Event()  # held events wait on it; set on the way out, however left
            async with self.buses(2) as (bus, ops), _set_on_exit(gate):
                topic = self.topic("lag")
                group = self.group("lag")
                assert await ops.groups(topic) == [], "a topic nobody used has no groups"

                def only(want: Callable[[GroupInfo], bool]) -> Callable[[list[GroupInfo]], bool]:
                    return lambda infos: len(infos) == 1 and want(infos[0])

                seen = Collector()
                first = await bus.subscribe(topic, seen, group=group)
                await bus.subscribe(topic, Collector())  # broadcast: not a group
                await bus.publish_many([self.event(topic, i, key=str(i)) for i in range(m)])
                await seen.wait_count(m, self.timeout)
                (info,) = await wait_groups(
                    ops,
                    topic,
                    only(lambda g: g.lag == 0 and g.pending == idle_pending),
                    self.timeout,
                    what=f"the {m} events consumed",
                )
                assert (info.topic, info.group, info.oldest_pending_age) == (topic, group, None)
                assert info.member_count in (1, None), info
                assert len(info.members) in (0, 1), info
                await first.stop()

                # Consumed m of n: the group lags by exactly n - m.
                await bus.publish_many([self.event(topic, i, key=str(i)) for i in range(m, n)])
                (info,) = await wait_groups(
                    ops, topic, only(lambda g: g.lag == n - m), self.timeout, what=f"a lag of {n - m}"
                )
                assert info.pending == idle_pending, info

                # A member that takes 3 and holds them.
                holding = Collector(on_event=lambda e: gate.wait())
                await bus.subscribe(topic, holding, group=group, options=ConsumerOptions(prefetch_count=held))
                want: tuple[int, int | None]
                if held_as == "pending":
                    want = (n - m - held, held)
                elif held_as == "handed_out":
                    want = (n - m - held, None)
                else:
                    want = (n - m, 0)
                    await holding.wait(lambda c: c.total_calls >= 1, self.timeout, what="a held event")
                (info,) = await wait_groups(
                    ops,
                    topic,
                    only(lambda g: (g.lag, g.pending) == want),
                    self.timeout,
                    what=f"(lag, pending) == {want} with {held} events held",
                )
                age = info.oldest_pending_age  # None where the broker does not say (NATS)
                assert age is None or (held_as == "pending" and 0 <= age < self.timeout + 1), info
                gate.set()
                await holding.wait_count(n - m, self.timeout)
                await wait_groups(
                    ops,
                    topic,
                    only(lambda g: (g.lag, g.pending) == (0, idle_pending)),
                    self.timeout,
                    what="the group to catch up",
                )
            assert set(seen.payloads("i") + holding.payloads("i")) == set(range(n))

        self.run(scenario)
