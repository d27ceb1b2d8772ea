"""Middleware shipped with the app layer: a correlation-id logging context, a timeout
and a per-key rate limit.

A middleware is ``async def mw(event, call_next)``. It may wrap the call, return
without calling ``call_next`` (the event is then acked as handled), pass a changed
event on, or raise (a handler failure: retried, then dead-lettered).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .. import errors as _errors
from ..errors import ConfigurationError, EventBusTimeoutError
from ..event import Event
from ._app import CallNext, Middleware

__all__ = [
    "CorrelationIdFilter",
    "HandlerTimeoutError",
    "correlation_id",
    "current_correlation_id",
    "rate_limit",
    "timeout",
]

log = logging.getLogger(__name__)

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dotmac_events_correlation_id", default=None
)
_event_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("dotmac_events_event_id", default=None)


def current_correlation_id() -> str | None:
    """The correlation id of the event being handled in this task (set by :func:`correlation_id`)."""
    return _correlation.get()


async def correlation_id(event: Event, call_next: CallNext) -> Any:
    """Give every event a correlation id and expose it to logging for the handler's duration.

    An event without one is its own correlation: its event id is used, as it is for
    the events the handler publishes (``@app.publisher``, ``app.publish``). Add
    :class:`CorrelationIdFilter` to a logging handler and use ``%(correlation_id)s``
    / ``%(event_id)s`` in its format.
    """
    # The event is passed on unchanged: rebuilding it would cost more than the rest.
    token_c = _correlation.set(event.metadata.correlation_id or event.metadata.event_id)
    token_e = _event_id.set(event.metadata.event_id)
    try:
        return await call_next(event)
    finally:
        _correlation.reset(token_c)
        _event_id.reset(token_e)


class CorrelationIdFilter(logging.Filter):
    """Adds ``correlation_id`` and ``event_id`` to every record (``-`` outside a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _correlation.get() or "-"
        record.event_id = _event_id.get() or "-"
        return True


def _handler_timeout_error() -> type[EventBusTimeoutError]:
    # One error for a handler that ran too long, whether the runner's handler_timeout
    # or this middleware cut it off: the core's class where the core defines one.
    core = getattr(_errors, "HandlerTimeoutError", None)
    if isinstance(core, type) and issubclass(core, EventBusTimeoutError):
        return core

    class HandlerTimeoutError(EventBusTimeoutError):
        """A handler (with the middleware after the timeout) ran longer than allowed."""

    return HandlerTimeoutError


HandlerTimeoutError = _handler_timeout_error()


def timeout(seconds: float) -> Middleware:
    """Fail a handler that runs longer than ``seconds``; the failure is retried like any other.

    The handler is cancelled at the limit; at-least-once delivery means the retry (or
    the dead letter) follows, never a silent drop.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ConfigurationError(f"timeout must be a number of seconds > 0, got {seconds!r}")
    limit = float(seconds)

    async def timeout_middleware(event: Event, call_next: CallNext) -> Any:
        try:
            return await asyncio.wait_for(call_next(event), limit)
        except asyncio.TimeoutError:
            raise HandlerTimeoutError(
                f"handler of {event.topic!r} ran longer than {limit}s (event {event.event_id})"
            ) from None

    timeout_middleware.__qualname__ = f"timeout({limit})"
    return timeout_middleware


def rate_limit(
    per_second: float,
    *,
    burst: int = 1,
    key: Callable[[Event], str | None] | None = None,
    max_keys: int = 10_000,
) -> Middleware:
    """Hold each key's events to ``per_second`` on average, ``burst`` at once.

    ``key`` picks the key (the event's ``key`` by default; ``None`` shares one
    bucket). An event over the limit waits for its turn: it is delayed, never dropped
    or failed, and it keeps its place in the subscription's concurrency window, so a
    limit below the arrival rate slows intake instead of piling events up. Buckets of
    the ``max_keys`` least recently seen keys are kept.
    """
    for name, value in (("per_second", per_second), ("burst", burst), ("max_keys", max_keys)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigurationError(f"rate_limit {name} must be a number > 0, got {value!r}")
    rate = float(per_second)
    capacity = float(burst)
    pick = key or (lambda event: event.key)
    # key -> (tokens, time of the last refill); least recently used first.
    buckets: OrderedDict[str | None, tuple[float, float]] = OrderedDict()

    async def rate_limit_middleware(event: Event, call_next: CallNext) -> Any:
        name = pick(event)
        while True:
            now = time.monotonic()
            tokens, last = buckets.pop(name, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens >= 1.0:
                buckets[name] = (tokens - 1.0, now)
                break
            buckets[name] = (tokens, now)
            # The wait is computed, not guessed: exactly until one token has accrued.
            await asyncio.sleep((1.0 - tokens) / rate)
        while len(buckets) > max_keys:
            buckets.popitem(last=False)
        return await call_next(event)

    rate_limit_middleware.__qualname__ = f"rate_limit({rate})"
    return rate_limit_middleware
