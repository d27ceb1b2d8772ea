"""The consumer runner: bounded concurrency, retries, dead-lettering, ack after handling."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Union

from attrs import evolve

from .errors import DecodeError, EventBusError, NonRetryableError, ValidationError
from .event import Event, EventMetadata
from .observe import ConsumeInfo
from .transport import Delivery, Message, SubscriptionSpec, TransportSubscription
from .wire import format_time

if TYPE_CHECKING:
    from .bus import EventBus
    from .options import ConsumerOptions
    from .retry import RetryPolicy

__all__ = ["DLQ_HEADERS", "Handler", "Subscription", "consumer_name"]

log = logging.getLogger(__name__)

Handler = Callable[[Event], Union[Awaitable[Any], Any]]

DLQ_ORIGINAL_TOPIC = "x-dlq-original-topic"
DLQ_CONSUMER_GROUP = "x-dlq-consumer-group"
DLQ_ERROR_TYPE = "x-dlq-error-type"
DLQ_ERROR_MESSAGE = "x-dlq-error-message"
DLQ_ATTEMPTS = "x-dlq-attempts"
DLQ_FAILED_AT = "x-dlq-failed-at"
DLQ_REASON = "x-dlq-reason"
DLQ_HEADERS = (
    DLQ_ORIGINAL_TOPIC,
    DLQ_CONSUMER_GROUP,
    DLQ_ERROR_TYPE,
    DLQ_ERROR_MESSAGE,
    DLQ_ATTEMPTS,
    DLQ_FAILED_AT,
    DLQ_REASON,
)
MAX_ERROR_MESSAGE = 1024


def consumer_name() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _clean(text: str) -> str:
    text = text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return text[:MAX_ERROR_MESSAGE]


class _Window:
    """How many deliveries the runner holds (queued, running or acking), at most ``limit``.

    A full window reopens once half of it is free again, so a transport pushing a
    backlog wakes once per half window instead of once per finished event.
    """

    __slots__ = ("_room", "full", "held", "limit", "reopen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reopen = limit - max(1, limit // 2)
        self.held = 0
        self.full = False
        self._room = asyncio.Event()

    def try_take(self) -> bool:
        """Take a slot if the window is open."""
        if self.full:
            return False
        self.held += 1
        if self.held >= self.limit:
            self.full = True
        return True

    async def take(self) -> None:
        while not self.try_take():
            self._room.clear()
            await self._room.wait()

    def give(self) -> None:
        self.held -= 1
        if self.full and self.held <= self.reopen:
            self.full = False
            self._room.set()


class _Lane:
    __slots__ = ("queue", "task", "wakeup")

    def __init__(self) -> None:
        self.queue: deque[Delivery] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Subscription:
    """A running subscription returned by :meth:`EventBus.subscribe`.

    ``stop()`` is graceful: no new deliveries, handlers already running finish
    (within ``timeout``), unstarted and unfinished events stay un-acked for
    redelivery. Counters (``handled``, ``retried``, ``dead_lettered``, ``released``)
    describe this subscription's life so far; ``handled`` counts an event once its
    handler returned and its ack was settled.
    """

    def __init__(
        self,
        bus: EventBus,
        spec: SubscriptionSpec,
        handler: Handler,
        options: ConsumerOptions,
        policy: RetryPolicy,
    ) -> None:
        self._bus = bus
        self.spec = spec
        self.topics = spec.topics
        self.group = spec.group
        self.name = spec.consumer_name
        self.options = options
        self._handler = handler
        self._policy = policy
        self._max_retries = policy.max_retries
        self._lanes = [_Lane() for _ in range(options.concurrency)]
        self._window = _Window(max(options.prefetch_count, options.concurrency))
        self._stopping = asyncio.Event()
        self._rr = 0
        self._transport_sub: TransportSubscription | None = None
        self._stopped = False
        self._stop_lock = asyncio.Lock()
        # Acks still travelling to the broker; each holds its window slot until done.
        self._acking: set[asyncio.Future[None]] = set()
        self.handled = 0
        self.retried = 0
        self.dead_lettered = 0
        self.released = 0
        self.errors = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def _start(self) -> None:
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._work(lane), name=f"dotmac-events-worker-{self.name}")
        try:
            self._transport_sub = await self._bus.transport.subscribe(self.spec, self._deliver)
        except BaseException:
            self._stopping.set()
            await self._stop_workers(0)
            raise

    @property
    def active(self) -> bool:
        return not self._stopped and not self._stopping.is_set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop consuming; wait up to ``timeout`` seconds (the bus's drain timeout by
        default) for running handlers, then cancel them and release their events."""
        async with self._stop_lock:
            if self._stopped:
                return
            if timeout is None:
                timeout = self._bus.drain_timeout
            self._stopping.set()
            if self._transport_sub is not None:
                try:
                    await self._transport_sub.stop()
                except Exception as exc:
                    log.warning("stopping subscription %s failed: %r", self.name, exc)
            for lane in self._lanes:
                while lane.queue:
                    delivery = lane.queue.popleft()
                    await self._release(delivery)
                    self._window.give()
                lane.wakeup.set()
            await self._stop_workers(timeout)
            await self._finish_acks(timeout)
            self._stopped = True
            self._bus._forget(self)

    async def _stop_workers(self, timeout: float) -> None:
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        if not tasks:
            return
        for lane in self._lanes:
            lane.wakeup.set()
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _finish_acks(self, timeout: float) -> None:
        # Events whose handler finished are acked before stop() returns; an ack that
        # cannot finish in time is abandoned and the event is redelivered later.
        if not self._acking:
            return
        _done, pending = await asyncio.wait(set(self._acking), timeout=max(timeout, 1.0))
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- intake ------------------------------------------------------------------------
    async def _deliver(self, delivery: Delivery) -> None:
        """The sink handed to the transport: waits for room, then queues the delivery."""
        if not self._window.try_take():
            await self._window.take()
        if self._stopping.is_set():
            self._window.give()
            await self._release(delivery)
            return
        lanes = self._lanes
        if len(lanes) == 1:
            lane = lanes[0]
        else:
            key: Hashable | None = delivery.ordering_key
            # Same key, same lane: per-key order survives concurrency.
            lane = min(lanes, key=lambda ln: len(ln.queue)) if key is None else lanes[hash(key) % len(lanes)]
        lane.queue.append(delivery)
        lane.wakeup.set()

    async def _work(self, lane: _Lane) -> None:
        queue = lane.queue
        while True:
            if not queue:
                if self._stopping.is_set():
                    return
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            delivery = queue.popleft()
            acking: asyncio.Future[None] | None = None
            try:
                acking = await self._process(delivery)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one event kill the worker
                self.errors += 1
                log.exception("unexpected error while processing a delivery on %s", self.topics)
            finally:
                if acking is None:
                    self._window.give()
                else:
                    acking.add_done_callback(self._acked)

    def _acked(self, _future: asyncio.Future[None]) -> None:
        self._window.give()

    def _ack_finished(self, delivery: Delivery, future: asyncio.Future[None]) -> None:
        # ``handled`` counts events whose ack was settled, so a caller waiting on it
        # sees the broker's state, not a write still on its way.
        self._acking.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._ack_failed(delivery, exc)
        self.handled += 1

    # -- processing --------------------------------------------------------------------
    async def _release(self, delivery: Delivery) -> None:
        self.released += 1
        try:
            await delivery.release()
        except Exception as exc:
            log.warning("release failed on %s: %r", delivery.message.topic, exc)

    async def _ack(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except Exception as exc:
            self._ack_failed(delivery, exc)

    def _ack_failed(self, delivery: Delivery, exc: BaseException) -> None:
        # The event will be delivered again: at-least-once, never lost.
        self.errors += 1
        log.warning("ack failed on %s (it will be redelivered): %r", delivery.message.topic, exc)
        self._bus._observers.error("ack", exc, {"topic": delivery.message.topic, "group": self.group})

    def _info(self, delivery: Delivery) -> ConsumeInfo:
        return ConsumeInfo(
            transport=self._bus.transport.name,
            topic=delivery.message.topic,
            group=self.group,
            consumer=self.name,
            delivery_count=delivery.delivery_count,
            position=delivery.message.position,
        )

    async def _process(self, delivery: Delivery) -> asyncio.Future[None] | None:
        """Handle one delivery; returns its ack when that is still in flight."""
        if delivery.withdrawn:
            # Another consumer owns it now: handling it here would duplicate it out of order.
            log.debug("skipping a withdrawn delivery of %s", delivery.message.topic)
            return None
        bus = self._bus
        observers = bus._observers
        message = delivery.message
        try:
            event = bus._decode(message)
        except (EventBusError, ValueError) as exc:
            reason = (
                "schema"
                if isinstance(exc, ValidationError) and not isinstance(exc, DecodeError)
                else "decode"
            )
            observers.error("decode", exc, {"topic": message.topic, "group": self.group})
            await self._dead_letter(delivery, None, exc, 0, reason, self._info(delivery))
            return None
        max_deliveries = self.options.max_deliveries
        if max_deliveries is None:
            max_deliveries = self._bus.transport.default_max_deliveries
        if max_deliveries is not None and delivery.delivery_count > max_deliveries:
            too_many = NonRetryableError(
                f"delivered {delivery.delivery_count} times, more than max_deliveries={max_deliveries}"
            )
            await self._dead_letter(
                delivery, event, too_many, delivery.delivery_count - 1, "max_deliveries", self._info(delivery)
            )
            return None
        if observers.consume_context is None and observers.on_consume is None and observers.on_retry is None:
            return await self._handle(delivery, event, None)
        info = self._info(delivery)
        with contextlib.ExitStack() as stack:
            if observers.consume_context is not None:
                for cm in observers.consume_context(event=event, info=info):
                    if cm is not None:
                        stack.enter_context(cm)
            return await self._handle(delivery, event, info)

    async def _handle(
        self, delivery: Delivery, event: Event, info: ConsumeInfo | None
    ) -> asyncio.Future[None] | None:
        observers = self._bus._observers
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                # Sync or async alike: an awaitable result (a coroutine) is awaited
                # under the handler timeout; a plain result costs no coroutine.
                result = self._handler(event)
                if result is not None and inspect.isawaitable(result):
                    timeout = self.options.handler_timeout
                    result = await (result if timeout is None else asyncio.wait_for(result, timeout))
            except asyncio.CancelledError:
                await asyncio.shield(self._release(delivery))
                if observers.on_consume is not None:
                    observers.on_consume(
                        event=event,
                        info=info or self._info(delivery),
                        duration=time.perf_counter() - started,
                        outcome="released",
                        error=None,
                        attempts=attempt,
                    )
                raise
            except NonRetryableError as exc:
                await self._fail(delivery, event, exc, attempt, "non_retryable", info, started)
                return None
            except Exception as exc:
                if attempt > self._max_retries:
                    await self._fail(delivery, event, exc, attempt, "max_retries", info, started)
                    return None
                delay = self._policy.compute(attempt)
                self.retried += 1
                if observers.on_retry is not None:
                    observers.on_retry(
                        event=event,
                        info=info or self._info(delivery),
                        attempt=attempt,
                        delay=delay,
                        error=exc,
                    )
                log.debug(
                    "handler failed on %s (attempt %d), retrying in %.3fs: %r",
                    event.topic,
                    attempt,
                    delay,
                    exc,
                )
                if delay > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    await self._release(delivery)
                    return None
                continue
            if result is not None and event.metadata.reply_to is not None:
                await self._reply(event, result)
            # The handler returned: ack now, without holding the lane for the broker's
            # answer (a profile of redis:// showed one XACK round trip per event
            # serialising the whole subscription).
            try:
                acking = delivery.ack_nowait()
            except Exception as exc:
                self._ack_failed(delivery, exc)
                acking = None
            if acking is None:
                self.handled += 1
            else:
                self._acking.add(acking)
                acking.add_done_callback(functools.partial(self._ack_finished, delivery))
            if observers.on_consume is not None:
                observers.on_consume(
                    event=event,
                    info=info or self._info(delivery),
                    duration=time.perf_counter() - started,
                    outcome="success",
                    error=None,
                    attempts=attempt,
                )
            return acking

    async def _fail(
        self,
        delivery: Delivery,
        event: Event,
        exc: BaseException,
        attempts: int,
        reason: str,
        info: ConsumeInfo | None,
        started: float,
    ) -> None:
        info = info or self._info(delivery)
        written = await self._dead_letter(delivery, event, exc, attempts, reason, info)
        observers = self._bus._observers
        if observers.on_consume is not None:
            observers.on_consume(
                event=event,
                info=info,
                duration=time.perf_counter() - started,
                outcome="dead_letter" if written else "released",
                error=exc,
                attempts=attempts,
            )

    async def _reply(self, request: Event, result: Any) -> None:
        reply_to = request.metadata.reply_to
        assert reply_to is not None
        correlation = request.metadata.correlation_id or request.metadata.event_id
        try:
            if isinstance(result, Event):
                reply = evolve(
                    result,
                    topic=reply_to,
                    metadata=evolve(
                        result.metadata, correlation_id=correlation, causation_id=request.metadata.event_id
                    ),
                )
            elif isinstance(result, dict):
                reply = Event(
                    topic=reply_to,
                    payload=result,
                    tenant_id=request.tenant_id,
                    metadata=EventMetadata(
                        correlation_id=correlation, causation_id=request.metadata.event_id
                    ),
                )
            else:
                raise ValidationError(
                    f"a request handler must return a dict or an Event, got {type(result).__name__}",
                    field="reply",
                )
            await self._bus.publish(reply)
        except Exception as exc:
            self.errors += 1
            log.warning("could not send the reply to %s: %r", reply_to, exc)
            self._bus._observers.error("reply", exc, {"topic": request.topic, "group": self.group})

    async def _dead_letter(
        self,
        delivery: Delivery,
        event: Event | None,
        exc: BaseException,
        attempts: int,
        reason: str,
        info: ConsumeInfo,
    ) -> bool:
        """Write the message to the DLQ unchanged plus ``x-dlq-*`` headers, then ack it.

        If the write fails the message is released instead, never acked.
        """
        message = delivery.message
        dlq_topic = self.options.dlq_for(message.topic)
        headers = {k: v for k, v in message.headers.items() if k not in DLQ_HEADERS}
        headers[DLQ_ORIGINAL_TOPIC] = message.topic
        headers[DLQ_CONSUMER_GROUP] = self.group or ""
        headers[DLQ_ERROR_TYPE] = type(exc).__qualname__
        headers[DLQ_ERROR_MESSAGE] = _clean(str(exc))
        headers[DLQ_ATTEMPTS] = str(attempts)
        headers[DLQ_FAILED_AT] = format_time(datetime.now(timezone.utc))
        headers[DLQ_REASON] = reason
        dead = Message(topic=dlq_topic, value=message.value, key=message.key, headers=headers)
        try:
            await self._bus.transport.publish((dead,))
        except Exception as write_exc:
            self.errors += 1
            log.error(
                "could not write the dead letter of %s to %s (left for redelivery): %r",
                message.topic,
                dlq_topic,
                write_exc,
            )
            self._bus._observers.error(
                "dead_letter", write_exc, {"topic": message.topic, "group": self.group}
            )
            await self._release(delivery)
            return False
        self.dead_lettered += 1
        log.warning(
            "dead-lettered event %s from %s to %s after %d attempt(s) (%s): %s: %s",
            message.headers.get("ce_id"),
            message.topic,
            dlq_topic,
            attempts,
            reason,
            type(exc).__qualname__,
            headers[DLQ_ERROR_MESSAGE],
        )
        observers = self._bus._observers
        if observers.on_dead_letter is not None:
            observers.on_dead_letter(
                event=event,
                message=message,
                info=info,
                dlq_topic=dlq_topic,
                reason=reason,
                error=exc,
                attempts=attempts,
            )
        await self._ack(delivery)
        return True

    def __repr__(self) -> str:
        return f"<Subscription {self.name} topics={list(self.topics)} group={self.group!r}>"
