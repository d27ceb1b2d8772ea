"""Liveness and readiness of a bus: the event-loop lag probe and the readiness check."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from dotmac.events import EventBus
from dotmac.events.metrics import LagSampler

__all__ = ["LoopLagProbe", "readiness"]

log = logging.getLogger(__name__)


class LoopLagProbe:
    """Measures how late the event loop runs a timer (the time it spends blocked).

    Every ``interval`` seconds a task asks to be woken ``interval`` seconds later and
    records how much later it actually ran. :attr:`healthy` is false when the worst
    delay of the last ``window`` seconds exceeds ``threshold``, or when the task has
    not run for ``threshold`` seconds (the loop is blocked right now; an HTTP probe
    answered by the same loop will then time out, which a liveness probe counts as a
    failure too).
    """

    def __init__(self, *, threshold: float = 1.0, interval: float = 0.25, window: float = 5.0) -> None:
        self.threshold = threshold
        self.interval = interval
        self.window = window
        self._samples: list[tuple[float, float]] = []  # (when, lag)
        self._last_tick: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            lag = max(now - expected, 0.0)
            self._last_tick = time.monotonic()
            self._samples.append((self._last_tick, lag))
            cutoff = self._last_tick - self.window
            while self._samples and self._samples[0][0] < cutoff:
                self._samples.pop(0)
            if lag > self.threshold:
                log.warning("the event loop was blocked for %.3f s", lag)

    def start(self) -> None:
        if self._task is None:
            self._last_tick = time.monotonic()
            self._task = asyncio.create_task(self._run(), name="dotmac-events-ops-loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def max_lag(self) -> float:
        """The worst lag of the window, including the time since the last tick."""
        worst = max((lag for _when, lag in self._samples), default=0.0)
        if self._last_tick is not None:
            worst = max(worst, time.monotonic() - self._last_tick - self.interval)
        return worst

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and self.max_lag <= self.threshold


async def readiness(
    bus: EventBus, *, timeout: float = 2.0, expect_subscriptions: int = 0, sampler: LagSampler | None = None
) -> tuple[bool, dict[str, Any]]:
    """Whether ``bus`` is ready to work, and the checks behind the answer.

    Ready means: the bus is started, it has at least ``expect_subscriptions``
    subscriptions and every one is live (:attr:`Subscription.active`), and the broker
    answers. The broker is asked through :meth:`EventBus.groups` when the transport
    supports introspection; without it the transport's own reconnect state is all
    there is, and only the first two checks apply.

    With a running ``sampler`` (a :class:`LagSampler` of the bus) its last round
    answers for the broker, so a probe costs no broker request; a round older than
    two intervals, or one that missed a subscribed topic, is refreshed on the spot
    (bounded by ``timeout``). Without one, every call asks for one subscribed topic.
    """
    checks: dict[str, Any] = {"started": bus.started}
    if not bus.started:
        return False, checks
    subs = bus.subscriptions
    inactive = sorted(s.name for s in subs if not s.active)
    checks["subscriptions"] = len(subs)
    checks["inactive_subscriptions"] = inactive
    ok = not inactive and len(subs) >= expect_subscriptions
    if bus.capabilities.introspection and sampler is not None:
        broker_ok, checks["broker"] = await _sampled_broker(sampler, timeout)
        ok = ok and broker_ok
    elif bus.capabilities.introspection:
        topic = next((t for s in subs for t in s.topics if not t.startswith("dotmac.reply.")), None)
        if topic is not None:
            try:
                await asyncio.wait_for(bus.groups(topic), timeout)
                checks["broker"] = "ok"
            except Exception as exc:  # any failure to answer means not ready
                checks["broker"] = f"{type(exc).__name__}: {exc}"
                ok = False
    return ok, checks


async def _sampled_broker(sampler: LagSampler, timeout: float) -> tuple[bool, str]:
    watched = sampler.topics()
    if not watched:
        return True, "not asked (no topic to ask about)"
    age = None if sampler.refreshed_at is None else time.time() - sampler.refreshed_at
    missed = set(watched) - set(sampler.groups) - set(sampler.errors)
    if age is None or age > 2 * sampler.interval or missed:
        try:
            await asyncio.wait_for(sampler.refresh(), timeout)
        except asyncio.TimeoutError:
            return False, f"the broker did not answer within {timeout:g} s"
    failed = [sampler.errors[t] for t in watched if t in sampler.errors]
    if failed:
        return False, failed[0]
    return True, "ok"
