"""The :class:`EventBus`: publish, subscribe, request-reply over any transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, Union

import pluggy
from attrs import evolve

from .batch import BatchHandler, BatchSubscription
from .codec import Codec
from .delay import DelayScheduler, due_time, schedule
from .dlq import DeadLetterQueue
from .dlq_headers import REPLY_ERROR_MESSAGE, REPLY_ERROR_TYPE
from .errors import (
    BusStateError,
    ConfigurationError,
    DecodeError,
    MessageTooLargeError,
    RemoteHandlerError,
    RequestTimeoutError,
    SchemaValidationError,
    UnsupportedOperationError,
    ValidationError,
)
from .event import Event, validate_topic
from .observe import Observers, PublishInfo, server_of
from .options import ConsumerOptions, retry_topic
from .registry import Registry
from .retry import RetryPolicy
from .runner import Handler, Subscription, consumer_name
from .structured import check_content_mode, write_structured
from .transport import Capabilities, GroupInfo, Message, SubscriptionSpec, Transport
from .wire import decode_foreign, decode_message, envelope_headers

__all__ = ["REPLY_TOPIC_PREFIX", "EventBus", "PayloadValidator"]

log = logging.getLogger(__name__)

_S = TypeVar("_S", bound=Subscription)

PayloadValidator = Union[Callable[[dict[str, Any]], Any], Mapping[str, Any]]
"""A callable that raises (or returns ``False``) for a bad payload, or a JSON Schema dict."""

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
REPLY_TOPIC_PREFIX = "dotmac.reply."
"""Every bus's private reply topic is this prefix plus a random hex id."""


def _compile_validator(topic: str, validator: PayloadValidator) -> Callable[[dict[str, Any]], None]:
    if isinstance(validator, Mapping):
        try:
            import jsonschema
        except ImportError as exc:
            raise ConfigurationError(
                "a JSON Schema validator needs the jsonschema package: pip install jsonschema"
            ) from exc
        checker = jsonschema.Draft202012Validator(dict(validator))

        def check_schema(payload: dict[str, Any]) -> None:
            error = jsonschema.exceptions.best_match(checker.iter_errors(payload))
            if error is not None:
                path = "payload" + "".join(f"[{p!r}]" for p in error.absolute_path)
                raise SchemaValidationError(f"{error.message} (topic {topic!r})", field=path)

        return check_schema

    def check_callable(payload: dict[str, Any]) -> None:
        try:
            ok = validator(payload)
        except SchemaValidationError:
            raise
        except Exception as exc:
            raise SchemaValidationError(f"{exc} (topic {topic!r})", field="payload") from exc
        if ok is False:
            raise SchemaValidationError(f"rejected by the validator of {topic!r}", field="payload")

    return check_callable


class EventBus:
    """Publishes and consumes :class:`Event` objects through one transport.

    Build one with :func:`dotmac.events.create_bus`. Use it as an async context
    manager (or call :meth:`start` and :meth:`close`). ``close`` stops every
    subscription, lets running handlers finish within ``drain_timeout`` seconds,
    leaves unfinished events for redelivery and releases every connection and task.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        registry: Registry,
        plugin_manager: pluggy.PluginManager,
        codec: str | Codec = "json",
        codec_options: Mapping[str, Any] | None = None,
        topic_codecs: Mapping[str, str | Codec] | None = None,
        source: str = "dotmac-events",
        drain_timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        observers: Iterable[object] = (),
        validators: Mapping[str, PayloadValidator] | None = None,
        content_mode: str = "binary",
        topic_modes: Mapping[str, str] | None = None,
    ) -> None:
        self.transport = transport
        self._registry = registry
        self._pm = plugin_manager
        self._extra_observers = list(observers)
        self._observers = Observers(plugin_manager, ())
        self.source = source
        self.drain_timeout = drain_timeout
        self.max_message_bytes = max_message_bytes
        self._decoders: dict[str, Codec] = {}
        self._codec = self._make_codec(codec, codec_options)
        self._topic_codecs = {t: self._make_codec(c, None) for t, c in (topic_codecs or {}).items()}
        self.content_mode = check_content_mode(content_mode, field="content_mode")
        self._topic_modes: dict[str, str] = {}
        for topic, mode in (topic_modes or {}).items():
            validate_topic(topic, field_name="topic_modes")
            self._topic_modes[topic] = check_content_mode(mode, field=f"topic_modes[{topic!r}]")
        # Only a bus that writes structured events anywhere pays for the lookup.
        self._structured = content_mode == "structured" or "structured" in self._topic_modes.values()
        self._validators: dict[str, Callable[[dict[str, Any]], None]] = {}
        for topic, validator in (validators or {}).items():
            self.add_validator(topic, validator)
        self._subscriptions: set[Subscription] = set()
        self._server: tuple[str | None, int | None] = (None, None)
        self._state = "new"
        self._closed: asyncio.Event | None = None
        self._close_lock: asyncio.Lock | None = None
        self._reply_topic = f"{REPLY_TOPIC_PREFIX}{uuid.uuid4().hex}"
        self._reply_sub: Subscription | None = None
        self._reply_lock: asyncio.Lock | None = None
        # Requests waiting for a reply, by the request's event id (a reply names it as
        # its cause); several requests may share one id when an event is re-sent.
        self._pending: dict[str, list[tuple[str, asyncio.Future[Event]]]] = {}
        self.dlq = DeadLetterQueue(self)

    # -- configuration -----------------------------------------------------------------
    def _make_codec(self, codec: str | Codec, options: Mapping[str, Any] | None) -> Codec:
        if isinstance(codec, Codec):
            instance = codec
        else:
            spec = self._registry.codec(codec)
            try:
                instance = spec.factory(**dict(options or {}))
            except TypeError as exc:
                raise ConfigurationError(f"bad options for the {codec!r} codec: {exc}") from exc
        self._decoders.setdefault(instance.content_type.lower(), instance)
        return instance

    def add_observer(self, observer: object) -> None:
        """Add an observer plugin to this bus alone (like ``create_bus(observers=...)``).

        Observers are resolved when the bus starts, so add them before that.
        """
        if self._state != "new":
            raise BusStateError("observers are resolved at start; add them before the bus starts")
        self._extra_observers.append(observer)

    def add_validator(self, topic: str, validator: PayloadValidator) -> None:
        """Check payloads of ``topic``: rejected at publish, dead-lettered at consume."""
        validate_topic(topic)
        self._validators[topic] = _compile_validator(topic, validator)

    @property
    def codec(self) -> Codec:
        """The codec events are encoded with unless their topic or content type picks another."""
        return self._codec

    @property
    def observers(self) -> Observers:
        """The observer hooks resolved when the bus started."""
        return self._observers

    @property
    def capabilities(self) -> Capabilities:
        return self.transport.capabilities

    @property
    def started(self) -> bool:
        return self._state == "started"

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the transport. Idempotent."""
        if self._state == "started":
            return
        if self._state in ("closing", "closed"):
            raise BusStateError("this bus was closed; create a new one")
        self._closed = asyncio.Event()
        self._close_lock = asyncio.Lock()
        self._reply_lock = asyncio.Lock()
        self._observers = Observers(self._pm, self._extra_observers)
        self._server = server_of(self.transport)
        await self.transport.start()
        self._state = "started"
        log.debug("bus started on %s", self.transport.describe())

    async def close(self, timeout: float | None = None) -> None:
        """Stop intake, drain in-flight handlers (up to ``timeout``), close the transport.

        Idempotent; concurrent calls wait for the first one.
        """
        if self._state == "new":
            self._state = "closed"
            return
        if self._state == "closed":
            return
        assert self._close_lock is not None
        assert self._closed is not None
        async with self._close_lock:
            if self._state == "closed":
                return
            self._state = "closing"
            drain = self.drain_timeout if timeout is None else timeout
            subs = list(self._subscriptions)
            if subs:
                await asyncio.gather(*(s.stop(drain) for s in subs), return_exceptions=True)
            for waiting in self._pending.values():
                for _correlation, future in waiting:
                    if not future.done():
                        future.set_exception(BusStateError("the bus was closed while waiting for a reply"))
            self._pending.clear()
            try:
                await self.transport.close()
            finally:
                self._state = "closed"
                self._closed.set()

    aclose = close

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", "closed") == "started":
            warnings.warn(
                f"unclosed {self!r}; use 'async with' or await bus.close()",
                ResourceWarning,
                stacklevel=1,
            )

    def __repr__(self) -> str:
        return f"<EventBus transport={self.transport.name} state={self._state}>"

    def _check_started(self) -> None:
        if self._state != "started":
            if self._state == "new":
                raise BusStateError("the bus is not started; use 'async with bus' or await bus.start()")
            raise BusStateError(f"the bus is {self._state}")

    # -- publishing --------------------------------------------------------------------
    def _codec_for(self, event: Event) -> Codec:
        content_type = event.metadata.content_type
        if content_type is not None:
            codec = self._decoder_for(content_type.split(";", 1)[0].strip().lower())
            if codec is not None:
                return codec
        if self._topic_codecs:
            codec = self._topic_codecs.get(event.topic)
            if codec is not None:
                return codec
        return self._codec

    def encode(self, event: Event) -> Message:
        """Validate and encode ``event`` into the wire :class:`Message` (no I/O)."""
        if self._validators:
            check = self._validators.get(event.topic)
            if check is not None:
                check(event.payload)
        codec = self._codec_for(event)
        body = codec.encode(event)
        if len(body) > self.max_message_bytes:
            raise MessageTooLargeError(
                f"encoded payload is {len(body)} bytes, the maximum is {self.max_message_bytes}",
                field="payload",
            )
        headers = envelope_headers(event, content_type=codec.content_type, source=self.source)
        if self._structured and self._topic_modes.get(event.topic, self.content_mode) == "structured":
            headers, body = write_structured(headers, body)
            if len(body) > self.max_message_bytes:
                raise MessageTooLargeError(
                    f"the structured event is {len(body)} bytes, the maximum is {self.max_message_bytes}",
                    field="payload",
                )
        return Message(topic=event.topic, value=body, key=event.key, headers=headers)

    async def publish(
        self, event: Event, *, deliver_at: datetime | None = None, delay: float | None = None
    ) -> None:
        """Validate, encode and send one event; returns when the transport accepted it.

        ``deliver_at`` (a timezone-aware datetime) or ``delay`` (seconds) delivers it no
        earlier than that: the event waits in a delay topic until a
        :class:`~dotmac.events.delay.DelayScheduler` (``start_delay_scheduler``) moves
        it to its topic. A time already past publishes at once.
        """
        if self._state != "started":
            self._check_started()
        if not isinstance(event, Event):
            raise ValidationError(f"expected an Event, got {type(event).__name__}", field="event")
        route: Callable[[Message], Message] | None = None
        if deliver_at is not None or delay is not None:
            due = due_time(deliver_at, delay)
            now = time.time()
            if due is not None and due > now:

                def route(message: Message) -> Message:
                    # Encoded as for an immediate publish, then parked in a delay topic.
                    return schedule(message.topic, message.value, message.key, message.headers, due, now=now)

        observers = self._observers
        if observers.publish_context is None and observers.on_publish is None:
            message = self.encode(event)
            await self.transport.publish((message if route is None else route(message),))
            return
        await self._publish_observed([event], route)

    async def publish_many(self, events: Iterable[Event]) -> None:
        """Send several events, batched where the transport can batch.

        Every event is validated and encoded before the first is sent.
        """
        self._check_started()
        batch = list(events)
        for i, event in enumerate(batch):
            if not isinstance(event, Event):
                raise ValidationError(f"expected an Event, got {type(event).__name__}", field=f"events[{i}]")
        if not batch:
            return
        observers = self._observers
        if observers.publish_context is None and observers.on_publish is None:
            await self.transport.publish([self.encode(e) for e in batch])
            return
        await self._publish_observed(batch)

    async def _publish_observed(
        self, events: Sequence[Event], route: Callable[[Message], Message] | None = None
    ) -> None:
        observers = self._observers
        infos = [
            PublishInfo(
                transport=self.transport.name,
                topic=e.topic,
                batch_size=len(events),
                server_address=self._server[0],
                server_port=self._server[1],
            )
            for e in events
        ]
        with contextlib.ExitStack() as stack:
            messages = []
            sent: list[Event] = []
            for event, info in zip(events, infos, strict=True):
                if observers.publish_context is not None:
                    extra: dict[str, str] = {}
                    managers = observers.publish_context(event=event, info=info)
                    for added in observers.enter_all(stack, managers, "publish_context"):
                        if added:
                            extra.update(added)
                    if extra:
                        event = event.with_headers(**extra)
                message = self.encode(event)
                messages.append(message if route is None else route(message))
                sent.append(event)
            started = time.perf_counter()
            try:
                await self.transport.publish(messages)
            except BaseException as exc:
                if observers.on_publish is not None:
                    duration = time.perf_counter() - started
                    for event, info in zip(sent, infos, strict=True):
                        observers.on_publish(
                            event=event, info=info, duration=duration, outcome="error", error=exc
                        )
                raise
            if observers.on_publish is not None:
                duration = time.perf_counter() - started
                for event, info in zip(sent, infos, strict=True):
                    observers.on_publish(
                        event=event, info=info, duration=duration, outcome="success", error=None
                    )

    # -- consuming ---------------------------------------------------------------------
    def _decoder_for(self, content_type: str | None) -> Codec | None:
        """The codec for a media type; ``None`` asks for the bus's default codec."""
        if content_type is None:
            return self._codec
        codec = self._decoders.get(content_type)
        if codec is None:
            spec = self._registry.codecs_by_type.get(content_type)
            if spec is None and content_type.endswith("+json"):
                # A structured-syntax suffix (RFC 6839): application/vnd.acme+json is
                # JSON, as the CloudEvents JSON format reads it.
                spec = self._registry.codecs_by_type.get("application/json")
            if spec is None:
                return None
            try:
                codec = spec.factory()
            except Exception as exc:
                raise DecodeError(f"the {spec.name!r} codec cannot be built without options: {exc}") from exc
            self._decoders[content_type] = codec
        return codec

    def _decode(self, message: Message) -> Event:
        """The event in ``message``; raises :class:`DecodeError` or a :class:`ValidationError`."""
        validators = self._validators
        return decode_message(
            message, self._decoder_for, validators.get(message.topic) if validators else None
        )

    decode = _decode

    def decode_foreign(self, message: Message) -> Event:
        """The event in ``message``, which may have no envelope (``ConsumerOptions(intake="foreign")``)."""
        validators = self._validators
        return decode_foreign(
            message,
            self._decoder_for,
            self._topic_codec,
            validators.get(message.topic) if validators else None,
        )

    def _topic_codec(self, topic: str) -> Codec:
        return self._topic_codecs.get(topic, self._codec) if self._topic_codecs else self._codec

    async def subscribe(
        self,
        topics: str | Sequence[str],
        handler: Handler,
        *,
        group: str | None = None,
        options: ConsumerOptions | None = None,
        name: str | None = None,
    ) -> Subscription:
        """Consume ``topics`` with ``handler`` (sync or async); returns once live.

        Without ``group`` the subscription sees every event published after it
        started (broadcast). With ``group`` the members of the group split the events
        and each group sees all of them. An event is acked only after the handler
        returned or the event was written to the dead-letter topic.
        """
        self._check_started()
        options = options or ConsumerOptions()
        spec, policy = self._prepare_subscription(topics, group, options, handler, name)
        return await self._run_subscription(Subscription(self, spec, handler, options, policy))

    async def _run_subscription(self, sub: _S) -> _S:
        self._subscriptions.add(sub)
        try:
            await sub._start()
        except BaseException:
            self._subscriptions.discard(sub)
            raise
        return sub

    def _prepare_subscription(
        self,
        topics: str | Sequence[str],
        group: str | None,
        options: ConsumerOptions,
        handler: Any,
        name: str | None,
    ) -> tuple[SubscriptionSpec, RetryPolicy]:
        """Validate a subscription's arguments; its spec and retry policy."""
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if not names:
            raise ValidationError("at least one topic is required", field="topics")
        for topic in names:
            validate_topic(topic)
        if group is not None:
            validate_topic(group, field_name="group")
            if not self.capabilities.consumer_groups:
                raise UnsupportedOperationError(f"the {self.transport.name} transport has no consumer groups")
        if options.retry_topics and group is None:
            # Every broadcast subscriber would see every retry, also of events it handled.
            raise ConfigurationError("ConsumerOptions.retry_topics needs a consumer group (group=...)")
        for topic in names:
            validate_topic(options.dlq_for(topic), field_name="dlq_topic")
            for stage in range(1, len(options.retry_topics) + 1):
                validate_topic(retry_topic(topic, stage), field_name="retry_topics")
        if not callable(handler):
            raise ConfigurationError(f"handler must be callable, got {type(handler).__name__}")
        policy = self._registry.retry_policy(options.retry_policy)(options)
        spec = SubscriptionSpec(
            topics=names,
            group=group,
            consumer_name=name or consumer_name(),
            prefetch=options.prefetch_count,
            start_from=options.start_from,
        )
        return spec, policy

    async def subscribe_batch(
        self,
        topics: str | Sequence[str],
        handler: BatchHandler,
        *,
        group: str | None = None,
        max_size: int = 100,
        max_wait_ms: int = 100,
        options: ConsumerOptions | None = None,
        name: str | None = None,
    ) -> BatchSubscription:
        """Consume ``topics`` with ``handler(events: list[Event])``; returns once live.

        The handler gets up to ``max_size`` events, after at most ``max_wait_ms``
        milliseconds of waiting for more, in the order they arrived; they are acked
        together when it returns. A failing batch is retried per ``options`` and then
        bisected so that only the events that fail on their own are dead-lettered
        (see :mod:`dotmac.events.batch`). Batches run one at a time per subscription.
        """
        self._check_started()
        for label, value, low in (("max_size", max_size, 1), ("max_wait_ms", max_wait_ms, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"{label} must be an int >= {low}, got {value!r}")
        options = options or ConsumerOptions()
        if options.concurrency != 1:
            raise ConfigurationError("subscribe_batch runs one batch at a time; use concurrency=1")
        if options.retry_topics:
            raise ConfigurationError(
                "subscribe_batch retries in place and bisects; retry_topics is not supported"
            )
        spec, policy = self._prepare_subscription(topics, group, options, handler, name)
        spec = evolve(spec, prefetch=max(spec.prefetch, max_size))
        return await self._run_subscription(
            BatchSubscription(
                self, spec, handler, options, policy, max_size=max_size, max_wait=max_wait_ms / 1000
            )
        )

    async def start_delay_scheduler(self, *, capacity: int = 10_000) -> DelayScheduler:
        """Start a scheduler that moves delayed events (``publish(..., delay=)``) to their
        topics when due; it stops with the bus. Replicas on other buses share the work."""
        self._check_started()
        if not self.capabilities.consumer_groups:
            raise UnsupportedOperationError(
                f"the {self.transport.name} transport has no consumer groups, which the delay scheduler uses"
            )
        scheduler = DelayScheduler(self, capacity=capacity)
        try:
            for stage in scheduler.build():
                scheduler.stages = (*scheduler.stages, await self._run_subscription(stage))
        except BaseException:
            await scheduler.stop(0)  # the stages started so far
            raise
        return scheduler

    def forget(self, subscription: Subscription) -> None:
        """Called by a subscription once it stopped."""
        self._subscriptions.discard(subscription)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    async def groups(self, topic: str) -> Sequence[GroupInfo]:
        """The consumer groups of ``topic``: members, pending events, lag (see
        :class:`~dotmac.events.transport.GroupInfo`). Needs ``capabilities.introspection``."""
        validate_topic(topic)
        self._check_started()
        return await self.transport.groups(topic)

    async def topics(self) -> list[str]:
        """The topics on the broker, sorted; dead-letter topics included, the reply
        topics of request-reply left out. Needs ``capabilities.introspection``."""
        self._check_started()
        names = await self.transport.topics()
        return sorted({n for n in names if not n.startswith(REPLY_TOPIC_PREFIX)})

    # -- request / reply ---------------------------------------------------------------
    async def _ensure_reply_subscription(self) -> None:
        if self._reply_sub is not None:
            return
        assert self._reply_lock is not None
        async with self._reply_lock:
            if self._reply_sub is None:
                self._reply_sub = await self.subscribe(
                    self._reply_topic,
                    self._on_reply,
                    options=ConsumerOptions(max_retries=0, retry_policy="none"),
                )

    async def _on_reply(self, event: Event) -> None:
        meta = event.metadata
        waiting = self._pending.get(meta.causation_id) if meta.causation_id else None
        if not waiting and meta.correlation_id:
            # A responder that echoes only the correlation id: match it when exactly
            # one pending request carries that id.
            matches = [w for w in self._pending.values() if w and w[0][0] == meta.correlation_id]
            waiting = matches[0] if len(matches) == 1 else None
        future = next((f for _c, f in waiting or () if not f.done()), None)
        if future is None:
            log.info(
                "discarding a reply nobody waits for (causation id %s, correlation id %s)",
                meta.causation_id,
                meta.correlation_id,
            )
            return
        error_type = event.headers.get(REPLY_ERROR_TYPE)
        if error_type is not None:
            future.set_exception(
                RemoteHandlerError(event.headers.get(REPLY_ERROR_MESSAGE, ""), error_type=error_type)
            )
        else:
            future.set_result(event)

    async def request(self, event: Event, timeout: float = 5.0) -> Event:
        """Publish ``event`` and wait for the reply a handler returns.

        The request carries this bus's reply topic in ``reply_to`` and its event id
        as correlation id (unless one is set); the reply is matched by the request's
        event id, so concurrent requests never see each other's replies. Raises
        :class:`~dotmac.events.errors.RequestTimeoutError` after ``timeout`` seconds,
        and :class:`~dotmac.events.errors.RemoteHandlerError` at once when the
        responder's handler failed or returned something that is not a reply.
        """
        self._check_started()
        if not self.capabilities.request_reply:
            raise UnsupportedOperationError(f"the {self.transport.name} transport has no request-reply")
        await self._ensure_reply_subscription()
        meta = event.metadata
        correlation = meta.correlation_id or meta.event_id
        request = evolve(event, metadata=evolve(meta, reply_to=self._reply_topic, correlation_id=correlation))
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (correlation, future)
        waiting = self._pending.setdefault(meta.event_id, [])
        waiting.append(entry)
        try:
            await self.publish(request)
            try:
                return await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(
                    f"no reply to {event.topic!r} (event {meta.event_id}) within {timeout}s"
                ) from None
        finally:
            waiting.remove(entry)
            if not waiting and self._pending.get(meta.event_id) is waiting:
                del self._pending[meta.event_id]
