"""The consumer runner: bounded concurrency, retries, dead-lettering, ack after handling.

A :class:`Subscription` owns every delivery the transport hands it, from the moment
it takes a window slot until exactly one of these settled it:

- **handled**: the handler returned; the delivery is acked;
- **dead-lettered**: it could not be decoded, was too large, was delivered too often,
  or its handler failed for the last time; it is written to the dead-letter topic and
  then acked (if that write fails, it is released instead);
- **released**: the subscription stopped first (or something unexpected happened
  before an outcome); the transport delivers it again later.

:meth:`Subscription._settle` is the one place that enforces this: whatever a codec,
a validator, a handler or an observer raises, the delivery reaches one of the three
ends and the lane goes on. Only the runner's own cancellation is a shutdown;
``KeyboardInterrupt`` and ``SystemExit`` propagate after the delivery was released.
Moving a failed event to a retry topic is a kind of dead-lettering: written there,
then acked (released if the write fails). A delivery held until its ``x-hold-until``
time, or skipped because a replay addresses another group, ends the same way.

The runner depends on the bus only through :class:`ConsumerHost`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import socket
import time
import types
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, Union

from attrs import evolve

from .dlq_headers import (
    DLQ_ATTEMPTS,
    DLQ_BODY_OMITTED,
    DLQ_CONSUMER_GROUP,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_FAILED_AT,
    DLQ_HEADERS,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    HOLD_UNTIL,
    REPLAY_GROUP,
    REPLY_ERROR_MESSAGE,
    REPLY_ERROR_TYPE,
    RETRY_ATTEMPTS,
    RETRY_FIRST_ERROR_MESSAGE,
    RETRY_FIRST_ERROR_TYPE,
    RETRY_ORIGINAL_TOPIC,
    SCHEDULE_HEADERS,
)
from .errors import (
    CodecError,
    DecodeError,
    HandlerTimeoutError,
    MessageTooLargeError,
    NonRetryableError,
    PayloadValidationError,
    SchemaValidationError,
    TransportError,
    ValidationError,
)
from .event import Event
from .hookspecs import ConsumeInfo
from .observe import server_of
from .options import retry_topic
from .transport import Delivery, Message, SubscriptionSpec, TransportSubscription
from .wire import foreign_onward, format_time, parse_time

if TYPE_CHECKING:
    from .observe import Observers
    from .options import ConsumerOptions
    from .retry import RetryPolicy
    from .transport import Transport

__all__ = ["DLQ_HEADERS", "ConsumerHost", "Handler", "Subscription", "consumer_name"]

log = logging.getLogger(__name__)

Handler = Callable[[Event], Union[Awaitable[Any], Any]]

MAX_ERROR_MESSAGE = 1024
# A handler raising one of these can never succeed on a retry: the payload does not
# have the shape the handler needs.
_SCHEMA_ERRORS = (PayloadValidationError, SchemaValidationError)
_Coroutine = types.CoroutineType


class ConsumerHost(Protocol):
    """What a subscription needs from the bus that runs it."""

    @property
    def transport(self) -> Transport: ...

    @property
    def observers(self) -> Observers: ...

    @property
    def drain_timeout(self) -> float: ...

    @property
    def max_message_bytes(self) -> int: ...

    def decode(self, message: Message) -> Event: ...

    def decode_foreign(self, message: Message) -> Event: ...

    async def publish(self, event: Event) -> None: ...

    def forget(self, subscription: Subscription) -> None: ...


def consumer_name() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def describe_error(exc: BaseException) -> str:
    """One line of text for a header: the message, or the type when there is none."""
    text = str(exc) or type(exc).__qualname__
    text = text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return text[:MAX_ERROR_MESSAGE]


def is_async_callable(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` returns an awaitable (an ``async def`` function, a
    partial of one, or an object whose ``__call__`` is ``async def``)."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return call is not None and inspect.iscoroutinefunction(call)


class _Release:
    """Returned by a step that leaves the delivery for redelivery; the caller releases it."""

    __slots__ = ()


RELEASE = _Release()
# What processing a delivery ends in: its ack still in flight, nothing left to do
# (``None``), or a release the caller performs.
_Outcome = Union["asyncio.Future[None]", None, _Release]


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

    def give(self, _settled: object = None) -> None:
        self.held -= 1
        if self.full and self.held <= self.reopen:
            self.full = False
            self._room.set()


class _Lane:
    __slots__ = ("asleep", "idle", "listed", "queue", "task", "wakeup")

    def __init__(self) -> None:
        self.queue: deque[Delivery] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        # Waiting on ``wakeup`` right now: only then does a new delivery need to set it.
        self.asleep = False
        # Waiting for work with nothing on its way, and on the list of idle lanes.
        self.idle = False
        self.listed = False


class Subscription:
    """A running subscription returned by :meth:`EventBus.subscribe`.

    ``stop()`` is graceful: no new deliveries, handlers already running finish
    (within ``timeout``), unstarted and unfinished events stay un-acked for
    redelivery. Counters describe this subscription's life so far: ``handled``
    (handler returned and its ack settled), ``retried``, ``dead_lettered``,
    ``released``, ``errors`` (failures outside handlers: acks, dead-letter writes,
    replies) and ``discarded`` (dead letters that failed again on a dead-letter
    topic and were acked rather than dead-lettered a second time).
    """

    # Deliveries carry events: _settle decodes them itself and calls _handle directly
    # in the common case (a subclass whose _process reads something else says False).
    _decodes = True

    def __init__(
        self,
        host: ConsumerHost,
        spec: SubscriptionSpec,
        handler: Handler,
        options: ConsumerOptions,
        policy: RetryPolicy,
        *,
        retry_stage: int = 0,
    ) -> None:
        self._host = host
        self._transport = host.transport
        self._observers = host.observers
        self._decode = host.decode_foreign if options.intake == "foreign" else host.decode
        self._server = server_of(self._transport)
        self.spec = spec
        self.topics = spec.topics
        self.group = spec.group
        self.name = spec.consumer_name
        self.options = options
        self._handler = handler
        self._policy = policy
        self._max_retries = policy.max_retries
        # Non-blocking retries: each (retry) topic makes one call, the next attempt
        # happens on the next retry topic. Stage 0 consumes the subscribed topics.
        self._retry_delays = options.retry_topics
        self._retry_stage = retry_stage
        if self._retry_delays:
            self._max_retries = 0
        self.retry_subscriptions: tuple[Subscription, ...] = ()
        self._max_bytes = options.max_message_bytes or host.max_message_bytes
        max_deliveries = options.max_deliveries
        self._max_deliveries = (
            max_deliveries if max_deliveries is not None else host.transport.default_max_deliveries
        )
        self._threaded = not is_async_callable(handler) and options.sync_handlers == "thread"
        # The handler is called in the loop with no timeout: _handle calls it directly.
        self._plain_call = not self._threaded and options.handler_timeout is None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lanes = [_Lane() for _ in range(options.concurrency)]
        # Keyless deliveries, taken by whichever lane is free first, and the lanes
        # that went idle (one entry per lane at most): O(1) per delivery at any
        # concurrency, and no keyless delivery waits behind a slow handler while
        # another lane is free.
        self._keyless: deque[Delivery] = deque()
        self._idle_lanes: deque[_Lane] = deque()
        self._window = _Window(max(options.prefetch_count, options.concurrency))
        self._stopping = asyncio.Event()
        self._cancelling = False
        self._transport_sub: TransportSubscription | None = None
        self._stopped = False
        self._stop_lock = asyncio.Lock()
        # Acks still travelling to the broker, each mapped to the window slots its done
        # callback gives back (see _give_when_settled).
        self._acking: dict[asyncio.Future[None], int] = {}
        self.handled = 0
        self.retried = 0
        self.dead_lettered = 0
        self.released = 0
        self.errors = 0
        self.discarded = 0
        self.skipped = 0
        self._holds: set[asyncio.Future[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------
    async def _start(self) -> None:
        if self._threaded:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.options.concurrency, thread_name_prefix=f"dotmac-events-{self.name}"
            )
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._work(lane), name=f"dotmac-events-worker-{self.name}")
        try:
            self._transport_sub = await self._transport.subscribe(self.spec, self._deliver)
            if self._retry_delays and self._retry_stage == 0:
                await self._start_retry_stages()
        except BaseException:
            await self.stop(0)
            raise

    async def _start_retry_stages(self) -> None:
        """Subscribe the same handler and group to each retry topic, so retried events
        are consumed wherever this subscription runs."""
        children: list[Subscription] = []
        self.retry_subscriptions = tuple(children)
        for stage in range(1, len(self._retry_delays) + 1):
            spec = evolve(
                self.spec,
                topics=tuple(retry_topic(t, stage) for t in self.topics),
                consumer_name=f"{self.name}-retry{stage}",
            )
            child = Subscription(
                self._host, spec, self._handler, self.options, self._policy, retry_stage=stage
            )
            children.append(child)
            self.retry_subscriptions = tuple(children)
            await child._start()

    @property
    def active(self) -> bool:
        """``True`` while the subscription takes deliveries: not stopping, and every
        worker alive (a worker ends only on shutdown)."""
        if self._stopped or self._stopping.is_set():
            return False
        return all(lane.task is not None and not lane.task.done() for lane in self._lanes)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop consuming; wait up to ``timeout`` seconds (the bus's drain timeout by
        default) for running handlers, then cancel them and release their events."""
        async with self._stop_lock:
            if self._stopped:
                return
            if timeout is None:
                timeout = self._host.drain_timeout
            self._stopping.set()
            for waiter in list(self._holds):
                _wake(waiter)
            if self.retry_subscriptions:
                await asyncio.gather(*(c.stop(timeout) for c in self.retry_subscriptions))
            if self._transport_sub is not None:
                try:
                    await self._transport_sub.stop()
                except Exception as exc:
                    log.warning("stopping subscription %s failed: %r", self.name, exc)
            await self._release_queued()
            await self._stop_workers(timeout)
            # A worker that died (KeyboardInterrupt in a handler) left its queue behind.
            await self._release_queued()
            await self._finish_acks(timeout)
            self._shutdown_executor()
            self._stopped = True
            self._host.forget(self)
            log.info(
                "subscription %s on %s stopped: %d handled, %d dead-lettered, %d released",
                self.name,
                list(self.topics),
                self.handled,
                self.dead_lettered,
                self.released,
            )

    async def _release_queued(self) -> None:
        for queue in (*(lane.queue for lane in self._lanes), self._keyless):
            while queue:
                delivery = queue.popleft()
                await self._release(delivery)
                self._window.give()
        for lane in self._lanes:
            lane.wakeup.set()

    def _worker_tasks(self) -> list[asyncio.Task[None]]:
        """The tasks that settle deliveries; stop() waits for them, then cancels them."""
        return [lane.task for lane in self._lanes if lane.task is not None]

    async def _stop_workers(self, timeout: float) -> None:
        tasks = self._worker_tasks()
        if not tasks:
            return
        for lane in self._lanes:
            lane.wakeup.set()
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            self._cancelling = True
            for task in pending:
                task.cancel()
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

    def _shutdown_executor(self) -> None:
        # A sync handler still running in its thread cannot be stopped; its event was
        # released, and the thread finishes on its own.
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _shutting_down(self) -> bool:
        """Whether a ``CancelledError`` seen now is this runner being cancelled (a
        shutdown) rather than one a handler raised or let through."""
        if self._cancelling:
            return True
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        return cancelling is not None and cancelling() > 0

    # -- intake ------------------------------------------------------------------------
    async def _take_slot(self, delivery: Delivery, *, taken: bool = False) -> bool:
        """Wait for room in the window (unless ``taken``); ``False`` (the delivery
        released, its room given back) if stopping."""
        if not taken and not self._window.try_take():
            await self._window.take()
        if self._stopping.is_set():
            self._window.give()
            await self._release(delivery)
            return False
        return True

    async def _deliver(self, delivery: Delivery) -> None:
        """The sink handed to the transport: waits for room, then queues the delivery."""
        taken = self._window.try_take()
        # With room and running (the common case) no _take_slot coroutine is needed.
        if (not taken or self._stopping.is_set()) and not await self._take_slot(delivery, taken=taken):
            return
        lanes = self._lanes
        if len(lanes) == 1:
            lane = lanes[0]
        else:
            key: Hashable | None = delivery.ordering_key
            if key is None:
                self._keyless.append(delivery)
                self._wake_idle_lane()
                return
            # Same key, same lane: per-key order survives concurrency.
            lane = lanes[hash(key) % len(lanes)]
            lane.idle = False
        lane.queue.append(delivery)
        if lane.asleep:
            lane.wakeup.set()
            lane.asleep = False  # woken once: the lane looks at its queue when it runs

    def _wake_idle_lane(self) -> None:
        """Wake the lane that went idle last (the likeliest to be warm), if any is;
        with every lane busy, the first to finish takes the keyless delivery."""
        idle = self._idle_lanes
        while idle:
            lane = idle.pop()
            lane.listed = False
            if lane.idle:
                lane.idle = False
                lane.wakeup.set()
                return

    async def _work(self, lane: _Lane) -> None:
        queue, keyless = lane.queue, self._keyless
        # The lane's own (keyed) deliveries first, then the shared keyless ones; a
        # queued delivery is taken without a _has_work coroutine.
        while queue or await self._has_work(lane):
            await self._settle(queue.popleft() if queue else keyless.popleft())

    async def _has_work(self, lane: _Lane) -> bool:
        """Wait until ``lane`` has a delivery queued (its own or a keyless one);
        ``False`` once stopping with none."""
        while not lane.queue and not self._keyless:
            if self._stopping.is_set():
                return False
            lane.wakeup.clear()
            lane.asleep = True
            try:
                if len(self._lanes) == 1:
                    await lane.wakeup.wait()
                else:
                    await self._wait_idle(lane)
            finally:
                lane.asleep = False
        return True

    async def _wait_idle(self, lane: _Lane) -> None:
        """Wait on the list of idle lanes until a delivery wakes ``lane``."""
        lane.idle = True
        if not lane.listed:
            lane.listed = True
            self._idle_lanes.append(lane)
        try:
            await lane.wakeup.wait()
        finally:
            lane.idle = False

    # -- the life of one delivery -------------------------------------------------------
    async def _settle(self, delivery: Delivery) -> None:
        """Take ``delivery`` to exactly one end (acked, dead-lettered, released) and
        free its window slot once that end is settled with the broker.

        The steps below never await after an end was reached: an ack is started and
        handed back as a future; a release is asked for with ``RELEASE`` and done here.
        Whatever escapes them happened before an end, so the delivery is released, and
        the lane goes on unless the runner itself is being cancelled (a shutdown) or
        the process is exiting (``KeyboardInterrupt``, ``SystemExit``).
        """
        outcome: _Outcome = RELEASE
        try:
            event = self._admit_now(delivery) if self._decodes else None
            if event is not None and self._observers.consume_context is None:
                # The common case, without a _process coroutine.
                outcome = await self._handle(delivery, event)
            else:
                outcome = await self._process(delivery, event)
        except Exception:
            self.errors += 1
            log.exception("unexpected error while processing a delivery on %s", list(self.topics))
        finally:
            # _conclude inline for the outcomes that need no await (an ack, no end).
            if outcome is None:
                self._window.give()
            elif isinstance(outcome, _Release):
                await self._conclude(delivery, outcome)
            else:
                self._give_when_settled(outcome)

    async def _conclude(self, delivery: Delivery, outcome: _Outcome) -> None:
        """Carry out ``outcome`` (a release) and free the window slot once it settled."""
        if outcome is None:
            self._window.give()
        elif isinstance(outcome, _Release):
            try:
                await asyncio.shield(self._release(delivery))
            finally:
                self._window.give()
        else:
            self._give_when_settled(outcome)

    def _give_when_settled(self, acking: asyncio.Future[None]) -> None:
        """Free one window slot once ``acking`` is done.

        An ack this runner started and whose done callback has not run yet gives the
        slot back from that callback: one callback per acked event, not two. (A
        transport may hand out one future for several acks: the first of their
        callbacks gives back the slots of all.)
        """
        if acking in self._acking:
            self._acking[acking] += 1
        else:
            acking.add_done_callback(self._window.give)

    async def _process(self, delivery: Delivery, event: Event | None = None) -> _Outcome:
        """Handle ``delivery``; ``event`` is what ``_admit_now`` gave (None: admit it)."""
        if event is None:
            admitted = await self._admit(delivery)
            if not isinstance(admitted, Event):
                return admitted
            event = admitted
        observers = self._observers
        if observers.consume_context is None:
            return await self._handle(delivery, event)
        with contextlib.ExitStack() as stack:
            managers = observers.consume_context(event=event, info=self._info(delivery))
            observers.enter_all(stack, managers, "consume_context")
            return await self._handle(delivery, event)

    def _admit_now(self, delivery: Delivery) -> Event | None:
        """The event of an ordinary delivery, without a coroutine of its own; None when
        ``_admit`` must look at it (it starts over: nothing here has an effect)."""
        message = delivery.message
        headers = message.headers
        if (
            delivery.withdrawn
            or REPLAY_GROUP in headers
            or HOLD_UNTIL in headers
            or len(message.value) > self._max_bytes
        ):
            return None
        max_deliveries = self._max_deliveries
        if max_deliveries is not None and delivery.delivery_count > max_deliveries:
            return None
        try:
            return self._decode(message)
        except Exception:
            # _admit decodes it again and dead-letters it with the reason.
            return None

    async def _admit(self, delivery: Delivery) -> Event | _Outcome:
        """The event to hand to the handler, or the end the delivery already reached
        (skipped, held past a stop, too large, undecodable, delivered too often)."""
        if delivery.withdrawn:
            # Another consumer owns it now: handling it here would duplicate it out of order.
            log.debug("skipping a withdrawn delivery of %s", delivery.message.topic)
            return None
        message = delivery.message
        headers = message.headers
        if REPLAY_GROUP in headers and headers[REPLAY_GROUP] != (self.group or ""):
            # A replay addressed to another group: this group handled it already.
            self.skipped += 1
            log.debug(
                "acking a replay of %s on %s addressed to group %r",
                headers.get("ce_id"),
                message.topic,
                headers[REPLAY_GROUP],
            )
            return self._start_ack(delivery, handled=False)
        if HOLD_UNTIL in headers and not await self._hold(headers[HOLD_UNTIL]):
            return RELEASE
        if len(message.value) > self._max_bytes:
            too_large = MessageTooLargeError(
                f"message is {len(message.value)} bytes, the consumer's maximum is {self._max_bytes}",
                field="value",
            )
            return await self._dead_letter(delivery, None, too_large, 0, "too_large")
        try:
            event = self._decode(message)
        except Exception as exc:
            # Whatever a codec, the envelope parser or a validator raised: the message
            # can never be handled, so it goes to the dead-letter topic now.
            reason = (
                "schema"
                if isinstance(exc, ValidationError) and not isinstance(exc, DecodeError)
                else "decode"
            )
            self._observers.error("decode", exc, {"topic": message.topic, "group": self.group})
            return await self._dead_letter(delivery, None, exc, 0, reason)
        max_deliveries = self._max_deliveries
        if max_deliveries is not None and delivery.delivery_count > max_deliveries:
            too_many = NonRetryableError(
                f"delivered {delivery.delivery_count} times, more than max_deliveries={max_deliveries}"
            )
            return await self._dead_letter(
                delivery, event, too_many, delivery.delivery_count - 1, "max_deliveries"
            )
        return event

    async def _hold(self, until: str) -> bool:
        """Wait until ``until`` (RFC 3339); ``False`` if the subscription stops first."""
        try:
            due = parse_time(until).timestamp()
        except ValueError:
            log.warning("ignoring an unreadable %s header %r", HOLD_UNTIL, until)
            return True
        remaining = due - time.time()
        if remaining > 0 and not self._stopping.is_set():
            # A timer and a future rather than wait_for: a delay scheduler holds
            # thousands of these at once, and stop() wakes them all.
            waiter = asyncio.get_running_loop().create_future()
            timer = asyncio.get_running_loop().call_later(remaining, _wake, waiter)
            self._holds.add(waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._holds.discard(waiter)
        return not self._stopping.is_set()

    async def _call(self, event: Any) -> Any:
        """One handler call under ``handler_timeout``; sync handlers run in a thread
        (``event`` is a list of events for a batch subscription)."""
        timeout = self.options.handler_timeout
        if self._executor is not None:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            future = loop.run_in_executor(self._executor, context.run, self._handler, event)
            result = await (future if timeout is None else asyncio.wait_for(future, timeout))
        else:
            result = self._handler(event)
        if result is not None and inspect.isawaitable(result):
            result = await (result if timeout is None else asyncio.wait_for(result, timeout))
        return result

    async def _handle(self, delivery: Delivery, event: Event) -> _Outcome:
        observers = self._observers
        # Only on_consume reads the duration: no clock read per event without it.
        started = time.perf_counter() if observers.on_consume is not None else 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._plain_call:
                    # An async (or sync, in the loop) handler with no timeout: no
                    # coroutine of _call's own per event.
                    result = self._handler(event)
                    if result is not None and (result.__class__ is _Coroutine or inspect.isawaitable(result)):
                        result = await result
                else:
                    result = await self._call(event)
            except BaseException as raised:
                failure = self._failure(raised)
                if failure is None:  # a shutdown, or the process exiting: _settle releases
                    self._consumed(delivery, event, "released", None, attempt, started)
                    raise
                reason = self._final_reason(failure, attempt)
                calls = attempt + self._prior_calls(delivery.message)
                if reason == "max_retries" and self._retry_stage < len(self._retry_delays):
                    outcome = await self._to_retry_topic(delivery, event, failure, calls)
                    released = isinstance(outcome, _Release)
                    self._consumed(
                        delivery, event, "released" if released else "retry", failure, attempt, started
                    )
                    return outcome
                if reason is not None:
                    outcome = await self._dead_letter(delivery, event, failure, calls, reason)
                    released = isinstance(outcome, _Release)
                    self._consumed(
                        delivery, event, "released" if released else "dead_letter", failure, attempt, started
                    )
                    return outcome
                delay = self._policy.compute(attempt)
                self.retried += 1
                if observers.on_retry is not None:
                    observers.on_retry(
                        event=event, info=self._info(delivery), attempt=attempt, delay=delay, error=failure
                    )
                log.debug(
                    "handler failed on %s (attempt %d), retrying in %.3fs: %r",
                    event.topic,
                    attempt,
                    delay,
                    failure,
                )
                if delay > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    self._consumed(delivery, event, "released", failure, attempt, started)
                    return RELEASE
                continue
            if event.metadata.reply_to is not None:
                await self._reply(event, result=result)
            # The handler returned: ack now, without holding the lane for the broker's
            # answer (a profile of redis:// showed one XACK round trip per event
            # serialising the whole subscription).
            acking = self._start_ack(delivery, handled=True)
            if observers.on_consume is not None:
                self._consumed(delivery, event, "success", None, attempt, started)
            return acking

    def _failure(self, raised: BaseException) -> BaseException | None:
        """The handler failure ``raised`` stands for, or ``None`` if it is a shutdown."""
        if isinstance(raised, (KeyboardInterrupt, SystemExit)):
            return None
        if isinstance(raised, asyncio.CancelledError) and self._shutting_down():
            return None
        if isinstance(raised, asyncio.TimeoutError) and self.options.handler_timeout is not None:
            # wait_for's TimeoutError carries no text; say what timed out.
            timed_out = HandlerTimeoutError(
                f"handler did not finish within handler_timeout={self.options.handler_timeout}s"
            )
            timed_out.__cause__ = raised
            return timed_out
        return raised

    def _final_reason(self, failure: BaseException, attempt: int) -> str | None:
        """The dead-letter reason when ``failure`` ends the event's attempts, else ``None``."""
        if isinstance(failure, NonRetryableError):
            return "non_retryable"
        if isinstance(failure, _SCHEMA_ERRORS):
            return "schema"
        if attempt > self._max_retries:
            return "max_retries"
        return None

    def _consumed(
        self,
        delivery: Delivery,
        event: Event,
        outcome: Any,
        error: BaseException | None,
        attempts: int,
        started: float,
    ) -> None:
        on_consume = self._observers.on_consume
        if on_consume is not None:
            on_consume(
                event=event,
                info=self._info(delivery),
                duration=time.perf_counter() - started,
                outcome=outcome,
                error=error,
                attempts=attempts,
            )

    def _info(self, delivery: Delivery) -> ConsumeInfo:
        return ConsumeInfo(
            transport=self._transport.name,
            topic=delivery.message.topic,
            group=self.group,
            consumer=self.name,
            delivery_count=delivery.delivery_count,
            position=delivery.message.position,
            server_address=self._server[0],
            server_port=self._server[1],
        )

    # -- the three ends ------------------------------------------------------------------
    def _start_ack(self, delivery: Delivery, *, handled: bool) -> asyncio.Future[None] | None:
        """Start acking ``delivery``; the returned future (if the ack is still in
        flight) holds its window slot until the broker answered."""
        try:
            acking = delivery.ack_nowait()
        except Exception as exc:
            self._ack_failed(delivery, exc)
            return None
        if acking is None:
            if handled:
                self.handled += 1
        else:
            self._acking.setdefault(acking, 0)
            acking.add_done_callback(functools.partial(self._ack_finished, delivery, handled))
        return acking

    def _ack_finished(self, delivery: Delivery, handled: bool, future: asyncio.Future[None]) -> None:
        # ``handled`` counts events whose ack was settled, so a caller waiting on it
        # sees the broker's state, not a write still on its way.
        slots = self._acking.pop(future, 0)
        while slots:
            self._window.give()
            slots -= 1
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._ack_failed(delivery, exc)
        if handled:
            self.handled += 1

    def _ack_failed(self, delivery: Delivery, exc: BaseException) -> None:
        # The event will be delivered again: at-least-once, never lost.
        self.errors += 1
        log.warning("ack failed on %s (it will be redelivered): %r", delivery.message.topic, exc)
        self._observers.error("ack", exc, {"topic": delivery.message.topic, "group": self.group})

    async def _release(self, delivery: Delivery) -> None:
        self.released += 1
        try:
            await delivery.release()
        except Exception as exc:
            log.warning("release failed on %s: %r", delivery.message.topic, exc)

    def _original_topic(self, message: Message) -> str:
        """The topic the event was first consumed from: on a retry topic, the one it
        names; elsewhere the message's own (a retry header there is not ours)."""
        if self._retry_stage > 0:
            return message.headers.get(RETRY_ORIGINAL_TOPIC, message.topic)
        return message.topic

    def _prior_calls(self, message: Message) -> int:
        """Handler calls the event had before this delivery (on earlier retry topics)."""
        return _int_header(message.headers, RETRY_ATTEMPTS) if self._retry_stage > 0 else 0

    async def _to_retry_topic(
        self, delivery: Delivery, event: Event, failure: BaseException, calls: int
    ) -> _Outcome:
        """Write the message to the next retry topic, due after that topic's delay,
        then ack it; released if the write fails."""
        message = delivery.message
        original = self._original_topic(message)
        delay = float(self._retry_delays[self._retry_stage])
        value, headers = foreign_onward(message, event)
        headers[RETRY_ORIGINAL_TOPIC] = original
        headers[RETRY_ATTEMPTS] = str(calls)
        if self._retry_stage == 0:  # whatever an earlier life of the event left there
            headers[RETRY_FIRST_ERROR_TYPE] = type(failure).__qualname__
            headers[RETRY_FIRST_ERROR_MESSAGE] = describe_error(failure)
        headers[HOLD_UNTIL] = format_time(datetime.fromtimestamp(time.time() + delay, timezone.utc))
        target = retry_topic(original, self._retry_stage + 1)
        try:
            await self._transport.publish((Message(target, value, message.key, headers),))
        except Exception as write_exc:
            self.errors += 1
            log.error("could not move %s to %s (left for redelivery): %r", message.topic, target, write_exc)
            self._observers.error("dead_letter", write_exc, {"topic": message.topic, "group": self.group})
            return RELEASE
        self.retried += 1
        if self._observers.on_retry is not None:
            self._observers.on_retry(
                event=event, info=self._info(delivery), attempt=calls, delay=delay, error=failure
            )
        log.debug("moved event %s to %s after %d call(s): %r", event.event_id, target, calls, failure)
        return self._start_ack(delivery, handled=False)

    async def _dead_letter(
        self,
        delivery: Delivery,
        event: Event | None,
        exc: BaseException,
        attempts: int,
        reason: str,
    ) -> _Outcome:
        """Write the message to the DLQ unchanged plus ``x-dlq-*`` headers, then ack it.

        If the write fails the message is released instead, never acked. A message that
        is itself a dead letter is not dead-lettered again: it is logged, counted in
        ``discarded`` and acked (the dead letter stays where it is). A request gets an
        error reply first, so its caller does not wait for the timeout.
        """
        message = delivery.message
        if event is not None and event.metadata.reply_to is not None:
            await self._reply(event, error=exc)
        if DLQ_ORIGINAL_TOPIC in message.headers:
            self.discarded += 1
            log.error(
                "a dead letter on %s failed again (%s: %s: %s); acked without a dead letter of a dead letter",
                message.topic,
                reason,
                type(exc).__qualname__,
                describe_error(exc),
            )
            self._observers.error("dead_letter", exc, {"topic": message.topic, "group": self.group})
            return self._start_ack(delivery, handled=False)
        # An event that went through retry topics is a dead letter of its original topic.
        original = self._original_topic(message)
        dlq_topic = self.options.dlq_for(original)
        # A foreign record keeps the id intake gave it, so its replay is the same event.
        value, kept = (message.value, message.headers) if event is None else foreign_onward(message, event)
        headers = {
            k: v
            for k, v in kept.items()
            # A replay's target group is not the dead letter's: subscribers of the
            # dead-letter topic must see it whatever their group.
            if k not in DLQ_HEADERS and k not in SCHEDULE_HEADERS and k != REPLAY_GROUP
        }
        headers[DLQ_ORIGINAL_TOPIC] = original
        headers[DLQ_CONSUMER_GROUP] = self.group or ""
        headers[DLQ_ERROR_TYPE] = type(exc).__qualname__
        headers[DLQ_ERROR_MESSAGE] = describe_error(exc)
        headers[DLQ_ATTEMPTS] = str(attempts)
        headers[DLQ_FAILED_AT] = format_time(datetime.now(timezone.utc))
        headers[DLQ_REASON] = reason
        dead = Message(topic=dlq_topic, value=value, key=message.key, headers=headers)
        try:
            try:
                await self._transport.publish((dead,))
            except TransportError as write_exc:
                if reason != "too_large" or write_exc.retriable:
                    raise
                # The broker refuses the body too: keep the envelope and say so.
                headers[DLQ_BODY_OMITTED] = str(len(message.value))
                await self._transport.publish((Message(dlq_topic, b"", message.key, headers),))
        except Exception as write_exc:
            self.errors += 1
            log.error(
                "could not write the dead letter of %s to %s (left for redelivery): %r",
                message.topic,
                dlq_topic,
                write_exc,
            )
            self._observers.error("dead_letter", write_exc, {"topic": message.topic, "group": self.group})
            return RELEASE
        self.dead_lettered += 1
        log.warning(
            "dead-lettered event %s from %s to %s after %d attempt(s) (%s): %s: %s",
            headers.get("ce_id"),
            message.topic,
            dlq_topic,
            attempts,
            reason,
            type(exc).__qualname__,
            headers[DLQ_ERROR_MESSAGE],
        )
        on_dead_letter = self._observers.on_dead_letter
        if on_dead_letter is not None:
            on_dead_letter(
                event=event,
                message=message,
                info=self._info(delivery),
                dlq_topic=dlq_topic,
                reason=reason,
                error=exc,
                attempts=attempts,
            )
        return self._start_ack(delivery, handled=False)

    # -- request-reply -------------------------------------------------------------------
    async def _reply(self, request: Event, *, result: Any = None, error: BaseException | None = None) -> None:
        """Answer a request: with the handler's result, or with an error reply when the
        handler failed or returned something that is not a reply. A handler that
        returned ``None`` sends nothing (another member may answer)."""
        if error is None and result is None:
            return
        try:
            if error is None:
                try:
                    await self._host.publish(build_reply(request, result))
                    return
                except (ValidationError, CodecError) as exc:  # it cannot be a reply
                    self.errors += 1
                    log.warning("the handler's result cannot be a reply to %s: %r", request.topic, exc)
                    self._observers.error("reply", exc, {"topic": request.topic, "group": self.group})
                    error = exc
            await self._host.publish(error_reply(request, error))
        except Exception as exc:
            self.errors += 1
            log.warning("could not send the reply to %s: %r", request.metadata.reply_to, exc)
            self._observers.error("reply", exc, {"topic": request.topic, "group": self.group})

    def __repr__(self) -> str:
        return f"<Subscription {self.name} topics={list(self.topics)} group={self.group!r}>"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _int_header(headers: Mapping[str, str], name: str) -> int:
    try:
        return max(0, int(headers.get(name, "0")))
    except ValueError:
        return 0


def build_reply(request: Event, result: Any) -> Event:
    """The reply to ``request`` carrying ``result``: a dict is the payload (see
    :meth:`Event.reply`); an :class:`Event` keeps its payload, key, headers and
    metadata but goes to the request's ``reply_to`` and names the request as its cause."""
    if isinstance(result, dict):
        return request.reply(result)
    if not isinstance(result, Event):
        raise ValidationError(
            f"a request handler must return a dict or an Event, got {type(result).__name__}", field="reply"
        )
    template = request.reply({})
    return evolve(
        result,
        topic=template.topic,
        tenant_id=result.tenant_id if result.tenant_id is not None else request.tenant_id,
        metadata=evolve(
            result.metadata,
            correlation_id=template.metadata.correlation_id,
            causation_id=template.metadata.causation_id,
            reply_to=None,
        ),
    )


def error_reply(request: Event, error: BaseException) -> Event:
    """The reply telling the requester that its handler failed with ``error``; JSON
    whatever the bus's codec is, since a schema codec has no schema for it."""
    reply = request.reply(
        {}, headers={REPLY_ERROR_TYPE: type(error).__qualname__, REPLY_ERROR_MESSAGE: describe_error(error)}
    )
    return evolve(reply, metadata=evolve(reply.metadata, content_type="application/json"))
