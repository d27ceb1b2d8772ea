"""Delayed delivery: delay topics, and the scheduler that moves due events to their target.

``bus.publish(event, delay=...)`` writes the encoded event to a *delay topic* instead
of its own topic. There is one delay topic per bucket (:data:`BUCKETS`: 0.25 s, 1 s,
4 s ... 65536 s); an event waiting ``d`` seconds goes to the shortest bucket not
shorter than ``d``, with an ``x-hold-until`` of its due time (of now plus the largest
bucket, for longer waits). The scheduler holds every message in a task of its own,
bounded by its window, so messages never wait for each other; the buckets keep near
and far due times apart (a window full of far ones does not hold up near ones) and
bound each hold, which a broker's redelivery timers like.

The :class:`DelayScheduler` is that consumer: replicas consume delay topic ``T``
in consumer group ``T`` (one group per bucket, so a replica joining one bucket does
not rebalance the others). When a message is due it is published to its target
topic (``x-deliver-to``) with its bytes, key and headers unchanged except the
scheduling headers, and only then acked; a message not yet due (a wait longer than
the largest bucket) moves to the bucket that covers what is left, the same way.
Held messages stay un-acked, so a scheduler that stops or dies leaves them to be
delivered again: nothing is lost, a message may be forwarded twice (at-least-once),
never earlier than due.

Retry topics (``ConsumerOptions.retry_topics``) use the same ``x-hold-until`` hold:
each is a delay topic of one fixed delay, consumed in order by the subscription itself
(equal delays keep due times in arrival order, so holding the head never delays a
later-due event).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .dlq_headers import HOLD_UNTIL, SCHEDULE_DELIVER_AT, SCHEDULE_DELIVER_TO, SCHEDULE_HEADERS
from .errors import DecodeError, ValidationError
from .event import Event, validate_topic
from .options import ConsumerOptions
from .retry import NoRetry
from .runner import RELEASE, ConsumerHost, Subscription, _Outcome, consumer_name
from .transport import Delivery, Message, SubscriptionSpec
from .wire import format_time, parse_time

if TYPE_CHECKING:
    from .event import Event

__all__ = [
    "BUCKETS",
    "DELAY_TOPICS",
    "DelayScheduler",
    "delay_topic",
    "due_time",
    "schedule",
]

log = logging.getLogger(__name__)

BUCKETS: tuple[float, ...] = (0.25, 1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
"""Seconds a message waits in each delay topic; a longer delay takes several hops."""


def delay_topic(bucket: float) -> str:
    """The delay topic of ``bucket`` seconds: ``dotmac.delay.<milliseconds>ms``."""
    return f"dotmac.delay.{round(bucket * 1000)}ms"


DELAY_TOPICS: tuple[str, ...] = tuple(delay_topic(b) for b in BUCKETS)


def due_time(deliver_at: datetime | None, delay: float | None, *, now: float | None = None) -> float | None:
    """The epoch time a publish asked for, or ``None`` for no delay; bad input raises
    :class:`ValidationError` before anything is sent."""
    if deliver_at is not None and delay is not None:
        raise ValidationError("pass deliver_at or delay, not both", field="deliver_at")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay):
            raise ValidationError(f"delay must be a number of seconds, got {delay!r}", field="delay")
        if delay < 0:
            raise ValidationError(f"delay must be >= 0 seconds, got {delay!r}", field="delay")
        return (time.time() if now is None else now) + float(delay)
    if deliver_at is not None:
        if not isinstance(deliver_at, datetime):
            raise ValidationError(
                f"deliver_at must be a datetime, got {type(deliver_at).__name__}", field="deliver_at"
            )
        if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
            raise ValidationError("deliver_at must be timezone-aware (e.g. UTC)", field="deliver_at")
        return deliver_at.timestamp()
    return None


def _stamp(epoch: float) -> str:
    return format_time(datetime.fromtimestamp(epoch, timezone.utc))


def schedule(
    target: str, value: bytes, key: str | None, headers: Mapping[str, str], due: float, *, now: float
) -> Message:
    """The delay-topic message that carries a message for ``target`` until ``due``."""
    remaining = due - now
    # The shortest bucket that covers the wait: one hop for any delay up to the
    # largest bucket, several for longer ones.
    bucket = next((b for b in BUCKETS if b >= remaining), BUCKETS[-1])
    out = {k: v for k, v in headers.items() if k not in SCHEDULE_HEADERS}
    out[SCHEDULE_DELIVER_TO] = target
    out[SCHEDULE_DELIVER_AT] = _stamp(due)
    out[HOLD_UNTIL] = _stamp(min(due, now + bucket))
    return Message(topic=delay_topic(bucket), value=value, key=key, headers=out)


async def _never_called(_event: Event) -> None:
    raise AssertionError("a delay stage forwards messages without a handler")


class _DelayStage(Subscription):
    """Consumes one delay topic: holds each message until due, then forwards it.

    Every held message waits in a task of its own (the window bounds how many), not
    in a lane: due times, not arrival order, decide when a message moves on. Acks out
    of order are safe: a transport commits only a prefix of acked messages.
    """

    # Its messages are scheduling records, not events: _process reads them, unhandled.
    _decodes = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holding: set[asyncio.Task[None]] = set()

    async def _deliver(self, delivery: Delivery) -> None:
        if not await self._take_slot(delivery):
            return
        task = asyncio.create_task(self._settle(delivery), name=f"dotmac-events-delay-{self.name}")
        self._holding.add(task)
        task.add_done_callback(self._holding.discard)

    def _worker_tasks(self) -> list[asyncio.Task[None]]:
        # A hold ends as soon as stopping is set (the message is released); a forward
        # in flight gets the drain timeout like a running handler.
        return [*super()._worker_tasks(), *self._holding]

    async def _process(self, delivery: Delivery, event: Event | None = None) -> _Outcome:
        if delivery.withdrawn:
            return None
        message = delivery.message
        headers = message.headers
        if HOLD_UNTIL in headers and not await self._hold(headers[HOLD_UNTIL]):
            return RELEASE
        try:
            target = headers[SCHEDULE_DELIVER_TO]
            validate_topic(target, field_name=SCHEDULE_DELIVER_TO)
            due = parse_time(headers[SCHEDULE_DELIVER_AT]).timestamp()
        except (KeyError, ValueError) as exc:
            bad = DecodeError(f"not a delayed message (missing or bad scheduling header): {exc}")
            return await self._dead_letter(delivery, None, bad, 0, "decode")
        now = time.time()
        if due <= now:
            kept = {k: v for k, v in headers.items() if k not in SCHEDULE_HEADERS}
            out = Message(topic=target, value=message.value, key=message.key, headers=kept)
        else:
            out = schedule(target, message.value, message.key, headers, due, now=now)
        try:
            await self._transport.publish((out,))
        except Exception as exc:
            # Not acked: the message is held again after redelivery, never dropped.
            self.errors += 1
            log.error("could not forward a delayed message to %s (left for redelivery): %r", out.topic, exc)
            self._observers.error("dead_letter", exc, {"topic": message.topic, "group": self.group})
            return RELEASE
        return self._start_ack(delivery, handled=True)


class DelayScheduler:
    """Moves delayed events to their topics when due; start one (or more, they share
    the work group by group) next to any bus: ``await bus.start_delay_scheduler()``.

    ``capacity`` bounds the messages each delay topic holds in memory at once (its
    prefetch window); each is held and forwarded independently of the others.
    """

    def __init__(self, host: ConsumerHost, *, capacity: int = 10_000) -> None:
        self._host = host
        self.options = ConsumerOptions(
            max_retries=0,
            retry_policy="none",
            prefetch_count=capacity,
            concurrency=1,
            # Events delayed before the first scheduler ever ran are waiting there.
            start_from="earliest",
        )
        self.stages: tuple[Subscription, ...] = ()

    def build(self) -> list[Subscription]:
        """One stage per delay topic (not started)."""
        name = consumer_name()
        return [
            _DelayStage(
                self._host,
                SubscriptionSpec(
                    topics=(topic,),
                    group=topic,
                    consumer_name=f"{name}-{topic.rsplit('.', 1)[-1]}",
                    prefetch=self.options.prefetch_count,
                    start_from="earliest",
                ),
                _never_called,
                self.options,
                NoRetry(),
            )
            for topic in DELAY_TOPICS
        ]

    @property
    def forwarded(self) -> int:
        """Messages moved on (to their target or a smaller bucket) and acked."""
        return sum(stage.handled for stage in self.stages)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop every stage; held messages are released for redelivery."""
        for stage in self.stages:
            await stage.stop(timeout)

    def __repr__(self) -> str:
        return f"<DelayScheduler stages={len(self.stages)} forwarded={self.forwarded}>"
