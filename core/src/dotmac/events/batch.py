"""Batch consume: a handler that receives a list of events, acked together.

:meth:`EventBus.subscribe_batch` runs a :class:`BatchSubscription`. Deliveries
queue in arrival order (the transport's order: per key, or per topic) until
``max_size`` of them wait or the oldest waited ``max_wait_ms``; then the handler gets
them as one list. When it returns, every event of the list is acked.

When it fails, the whole list is retried following the subscription's retry policy.
If it still fails (or raised ``NonRetryableError`` / a schema error, which no retry
fixes) the list is *bisected*: each half is handed to the handler once, left half
first, and a half that fails is split again, down to single events. A single event
gets the retry policy again and is then dead-lettered with the usual ``x-dlq-*``
headers. So the healthy events of a batch are handled and acked and only the events
that fail on their own end in the dead-letter topic; a batch with one poison event
among ``n`` costs about ``2 * log2(n)`` extra calls.

Every delivery reaches exactly one end, as in :class:`~dotmac.events.runner.Subscription`:
whatever escapes, the deliveries of the batch without an end are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Union

from .event import Event
from .runner import RELEASE, Subscription, _Lane, _Outcome, _Release, _Window
from .transport import Delivery

__all__ = ["BatchHandler", "BatchSubscription"]

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[Event]], Union[Awaitable[Any], Any]]


class BatchSubscription(Subscription):
    """A running batch subscription (see :meth:`EventBus.subscribe_batch`).

    ``batches`` counts handler calls that returned, ``bisections`` the times a
    failing list was split. The other counters are those of :class:`Subscription`,
    per event.
    """

    def __init__(self, *args: Any, max_size: int, max_wait: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_size = max_size
        self.max_wait = max_wait
        # The window must hold a full batch, or a batch would never fill.
        self._window = _Window(max(self.options.prefetch_count, max_size))
        self.batches = 0
        self.bisections = 0

    async def _work(self, lane: _Lane) -> None:
        queue = lane.queue
        loop = asyncio.get_running_loop()
        while await self._has_work(lane):
            deadline = loop.time() + self.max_wait
            while len(queue) < self.max_size and not self._stopping.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                lane.wakeup.clear()
                lane.asleep = True  # so that _deliver wakes it
                try:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lane.wakeup.wait(), remaining)
                finally:
                    lane.asleep = False
            if self._stopping.is_set():
                return  # stop() releases what is queued
            batch = [queue.popleft() for _ in range(min(self.max_size, len(queue)))]
            await self._settle_batch(batch)

    async def _settle_batch(self, deliveries: list[Delivery]) -> None:
        """Take every delivery of the batch to exactly one end."""
        self._open: dict[int, Delivery] = {id(d): d for d in deliveries}
        try:
            ready: list[tuple[Delivery, Event]] = []
            for delivery in deliveries:
                admitted: Event | _Outcome = RELEASE
                try:
                    admitted = await self._admit(delivery)
                except Exception:
                    self.errors += 1
                    log.exception("unexpected error while admitting a delivery on %s", list(self.topics))
                if isinstance(admitted, Event):
                    ready.append((delivery, admitted))
                else:
                    await self._end(delivery, admitted)
            if ready:
                await self._run(ready, self._max_retries)
        except Exception:
            self.errors += 1
            log.exception("unexpected error while handling a batch on %s", list(self.topics))
        finally:
            left = list(self._open.values())
            self._open = {}
            for delivery in left:
                await self._conclude(delivery, RELEASE)

    async def _end(self, delivery: Delivery, outcome: _Outcome) -> None:
        if self._open.pop(id(delivery), None) is not None:
            await self._conclude(delivery, outcome)

    async def _run(self, items: list[tuple[Delivery, Event]], retries: int) -> None:
        """Call the handler with ``items`` (retrying up to ``retries`` times), then
        bisect what still fails. Returns without an end for ``items`` only on stop."""
        started = time.perf_counter()
        events = [event for _delivery, event in items]
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._call(events)
            except BaseException as raised:
                failure = self._failure(raised)
                if failure is None:  # a shutdown: _settle_batch releases what is open
                    raise
                reason = self._final_reason(failure, attempt)
                if reason is None and attempt <= retries:
                    delay = self._policy.compute(attempt)
                    self.retried += len(items)
                    log.debug("batch of %d failed (attempt %d), retrying: %r", len(items), attempt, failure)
                    if delay > 0:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._stopping.wait(), delay)
                    if self._stopping.is_set():
                        return
                    continue
                if len(items) == 1:
                    delivery, event = items[0]
                    outcome = await self._dead_letter(
                        delivery, event, failure, attempt, reason or "max_retries"
                    )
                    released = isinstance(outcome, _Release)
                    self._consumed(
                        delivery, event, "released" if released else "dead_letter", failure, attempt, started
                    )
                    await self._end(delivery, outcome)
                    return
                self.bisections += 1
                middle = len(items) // 2
                for half in (items[:middle], items[middle:]):
                    # A half is tried once; a single event gets the retry policy again.
                    await self._run(half, self._max_retries if len(half) == 1 else 0)
                    if self._stopping.is_set():
                        return
                return
            self.batches += 1
            for delivery, event in items:
                acking = self._start_ack(delivery, handled=True)
                self._consumed(delivery, event, "success", None, attempt, started)
                await self._end(delivery, acking)
            return
