"""Handlers that record what they see and let a test await a condition, not a sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..event import Event

if TYPE_CHECKING:
    from ..bus import EventBus
    from ..dlq import DeadLetter
    from ..transport import GroupInfo

__all__ = ["Collector", "wait_dead_letters", "wait_for", "wait_groups"]


async def wait_for(predicate: Callable[[], bool], timeout: float, *, what: str = "condition") -> None:
    """Await ``predicate()`` becoming true, checking after every loop turn.

    For conditions no event signals (state of another object). Raises
    ``AssertionError`` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(0.05, delay + 0.001)


async def wait_dead_letters(bus: EventBus, topic: str, count: int, timeout: float) -> list[DeadLetter]:
    """Await at least ``count`` dead letters on ``topic`` (a dead-letter topic) and return
    them all (``bus.dlq.list``, so the transport must be readable)."""
    deadline = time.monotonic() + timeout
    while len(letters := await bus.dlq.list(topic)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {count} dead letters on {topic}")
        await asyncio.sleep(0.02)
    return letters


async def wait_groups(
    bus: EventBus,
    topic: str,
    predicate: Callable[[list[GroupInfo]], bool],
    timeout: float,
    *,
    what: str = "groups",
) -> list[GroupInfo]:
    """Await ``predicate(bus.groups(topic))`` and return that report (acks and commits
    reach the broker in the background). Raises ``AssertionError`` naming ``what`` and
    the last report after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate(infos := list(await bus.groups(topic))):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last report: {infos}")
        await asyncio.sleep(0.02)
    return infos


class Collector:
    """An async handler that records events and wakes waiters when a count is reached.

    ``fail`` optionally decides, per event and call number, whether the handler raises.
    """

    def __init__(
        self,
        fail: Callable[[Event, int], BaseException | None] | None = None,
        on_event: Callable[[Event], Awaitable[Any] | Any] | None = None,
    ) -> None:
        self.events: list[Event] = []
        self.calls: dict[str, int] = {}
        self.total_calls = 0
        self._fail = fail
        self._on_event = on_event
        self._changed = asyncio.Event()

    async def __call__(self, event: Event) -> Any:
        self.total_calls += 1
        count = self.calls.get(event.event_id, 0) + 1
        self.calls[event.event_id] = count
        self._changed.set()
        if self._fail is not None:
            error = self._fail(event, count)
            if error is not None:
                raise error
        result = None
        if self._on_event is not None:
            result = self._on_event(event)
            if asyncio.iscoroutine(result):
                result = await result
        self.events.append(event)
        self._changed.set()
        return result

    @property
    def ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    def payloads(self, key: str) -> list[Any]:
        return [e.payload.get(key) for e in self.events]

    async def wait(
        self, predicate: Callable[[Collector], bool], timeout: float, what: str = "events"
    ) -> None:
        """Await ``predicate(self)``; woken by every handler call."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}: "
                    f"{len(self.events)} handled, {self.total_calls} calls"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                continue

    async def wait_count(self, n: int, timeout: float) -> None:
        await self.wait(lambda c: len(c.events) >= n, timeout, what=f"{n} events")

    async def wait_unique(self, n: int, timeout: float) -> None:
        await self.wait(lambda c: len(set(c.ids)) >= n, timeout, what=f"{n} distinct events")
