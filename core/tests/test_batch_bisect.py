"""A batch that keeps failing is bisected: the poison event is dead-lettered alone, with
its own attempts, and every other event of the batch is handled exactly once."""

from __future__ import annotations

import pytest

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.testing import wait_for

pytest.importorskip("dotmac_events_memory")

T = 5.0


class Poisoned(Exception):
    pass


async def test_a_poison_event_is_bisected_out_and_dead_lettered_alone(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        calls: list[list[int]] = []
        handled: list[int] = []

        async def handle(events: list[Event]) -> None:
            numbers = [e.payload["i"] for e in events]
            calls.append(numbers)
            if 2 in numbers:
                raise Poisoned(f"order 2 cannot be billed (batch {numbers})")
            handled.extend(numbers)

        options = ConsumerOptions(max_retries=1)
        sub = await bus.subscribe_batch(
            "bills", handle, group="billing", max_size=4, max_wait_ms=50, options=options
        )
        events = [Event(topic="bills", payload={"i": i}) for i in range(4)]
        await bus.publish_many(events)
        await wait_for(lambda: sub.dead_lettered == 1, T, what="the poison event's dead letter")
        await wait_for(lambda: sorted(handled) == [0, 1, 3], T, what="the healthy events")

        assert sorted(handled) == [0, 1, 3]  # each healthy event once, none twice
        assert calls[0] == [0, 1, 2, 3] and calls[1] == [0, 1, 2, 3]  # first try, one retry
        assert sub.bisections >= 1
        assert calls.count([2]) == 2  # alone, it gets the retry policy again: 1 + max_retries
        (letter,) = await bus.dlq.list("bills.dlq")
        assert letter.event_id == events[2].event_id
        assert (letter.reason, letter.attempts, letter.consumer_group) == ("max_retries", 2, "billing")
        assert letter.error_type is not None and letter.error_type.endswith("Poisoned")
        await sub.stop(1.0)
        assert (sub.handled, sub.dead_lettered, sub.released) == (3, 1, 0)
