"""The :class:`App`: decorator subscribers and publishers, middleware, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

import cattrs
from attrs import evolve, frozen

from ..bus import EventBus
from ..config import create_bus, redact_url
from ..errors import BusStateError, ConfigurationError, ValidationError
from ..event import Event, EventMetadata, validate_topic
from ..options import ConsumerOptions
from ..runner import Subscription
from ._params import APP, BUS, EVENT, PAYLOAD, ParamPlan, make_converter, plan_parameters, unstructure

__all__ = [
    "App",
    "CallNext",
    "DrainReport",
    "Lifespan",
    "Middleware",
    "PublisherSpec",
    "SubscriberSpec",
    "current_event",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
CallNext = Callable[[Event], Awaitable[Any]]
"""What a middleware calls to run the rest of the chain (later middleware, then the handler)."""
Middleware = Callable[[Event, CallNext], Awaitable[Any]]
"""``async def mw(event, call_next)``: wrap, short-circuit, enrich or transform a delivery."""
Hook = Callable[[], Union[Awaitable[None], None]]
Lifespan = Callable[["App"], contextlib.AbstractAsyncContextManager[Any]]
"""``lifespan(app)`` returns an async context manager entered at start, exited at stop."""

_BUS_OPTIONS = frozenset(
    {
        "codec",
        "codec_options",
        "topic_codecs",
        "source",
        "drain_timeout",
        "max_message_bytes",
        "observers",
        "validators",
    }
)
_current: contextvars.ContextVar[Event | None] = contextvars.ContextVar("dotmac_events_event", default=None)
_ID_NAMESPACE = uuid.UUID("6f1d0b8e-3c44-5a55-9a0e-0d0c0a7e5e11")


def current_event() -> Event | None:
    """The event whose handler (or middleware) is running in this task, if any."""
    return _current.get()


@frozen
class PublisherSpec:
    """``@app.publisher(topic)``: where a handler's return value is published."""

    topic: str
    key: Callable[[Event], str | None] | None = None


@frozen
class SubscriberSpec:
    """One ``@app.subscriber(...)`` declaration."""

    handler: Callable[..., Any]
    topics: tuple[str, ...]
    group: str | None
    options: ConsumerOptions
    middlewares: tuple[Middleware, ...]
    name: str | None
    plan: ParamPlan | None

    @property
    def title(self) -> str:
        return getattr(self.handler, "__qualname__", None) or repr(self.handler)


@frozen
class DrainReport:
    """What a stop did, summed over the app's subscriptions.

    ``in_flight`` handlers were running when intake stopped; ``drained`` of them
    finished within the grace period, ``cancelled`` did not and their events were
    released for redelivery. ``released`` counts every event given back un-acked
    (fetched but not started, cancelled, or waiting for a retry). ``handled``,
    ``retried`` and ``dead_lettered`` count the subscriptions' whole run.
    """

    handled: int
    retried: int
    dead_lettered: int
    released: int
    cancelled: int
    seconds: float
    in_flight: int = 0

    @property
    def drained(self) -> int:
        return max(0, self.in_flight - self.cancelled)

    @property
    def grace_expired(self) -> bool:
        return self.cancelled > 0


class _Binding:
    """A subscriber while the app runs: its call chain, subscription and in-flight count."""

    __slots__ = ("call", "cancelled", "in_flight", "spec", "sub")

    def __init__(self, spec: SubscriberSpec) -> None:
        self.spec = spec
        self.sub: Subscription | None = None
        self.in_flight = 0
        self.cancelled = 0
        self.call: Callable[[Event], Awaitable[Any]] | None = None


class App:
    """A service: subscribers, publishers, middleware and lifespan around one bus.

    ``target`` is anything :func:`~dotmac.events.create_bus` takes (a URL, a config
    object, a dict such as one from :func:`~dotmac.events.load_toml_config`), or
    ``None`` for ``$DOTMAC_EVENTS_URL``. The bus is built when the app starts, so the
    runner (``dotmac-events run --url``) and :class:`~dotmac.events.testing.TestApp`
    can point the same app elsewhere.

    Run it with ``dotmac-events run module:app``, or inside another asyncio program
    with ``async with app:``.
    """

    def __init__(
        self,
        target: str | Mapping[str, Any] | object | None = None,
        *,
        name: str | None = None,
        lifespan: Lifespan | None = None,
        converter: cattrs.Converter | None = None,
        grace: float = 30.0,
        bus_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
            raise ConfigurationError(f"grace must be a number of seconds >= 0, got {grace!r}")
        unknown = set(bus_options or {}) - _BUS_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown bus option(s) {sorted(unknown)}; create_bus takes {sorted(_BUS_OPTIONS)}"
            )
        self.target = target
        self.name = name or "app"
        self.grace = float(grace)
        self.converter = converter or make_converter()
        self.bus_options = dict(bus_options or {})
        self._lifespan = lifespan
        self._subscribers: list[SubscriberSpec] = []
        self._publishers: dict[Callable[..., Any], list[PublisherSpec]] = {}
        self._middlewares: list[Middleware] = []
        self._startup: list[Hook] = []
        self._after_startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._bus: EventBus | None = None
        self._bindings: list[_Binding] = []
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._state = "new"
        self._lock: asyncio.Lock | None = None
        self.last_report: DrainReport | None = None

    # -- declarations ------------------------------------------------------------------
    def subscriber(
        self,
        topics: str | Sequence[str],
        *,
        group: str | None = None,
        options: ConsumerOptions | None = None,
        middlewares: Iterable[Middleware] = (),
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Consume ``topics`` with the decorated function; returns it unchanged.

        The function's first parameter receives the payload, structured by its
        annotation (attrs class, dataclass, ``TypedDict``, pydantic model, ``dict``)
        or the :class:`Event` itself; later parameters annotated ``Event``,
        ``EventBus`` or ``App`` are filled in. Sync functions run in a worker thread.
        """
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if not names:
            raise ValidationError("at least one topic is required", field="topics")
        for topic in names:
            validate_topic(topic)
        if group is not None:
            validate_topic(group, field_name="group")
        if options is not None and not isinstance(options, ConsumerOptions):
            raise ConfigurationError(f"options must be a ConsumerOptions, got {type(options).__name__}")
        chain = tuple(middlewares)
        for mw in chain:
            if not callable(mw):
                raise ConfigurationError(f"middleware must be callable, got {type(mw).__name__}")

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError(f"a subscriber must be callable, got {type(fn).__name__}")
            if self._state != "new" and self._state != "stopped":
                raise BusStateError(
                    f"app {self.name!r} is {self._state}: declare subscribers before it starts"
                )
            try:
                plan: ParamPlan | None = plan_parameters(fn, self.converter, App)
            except ConfigurationError as exc:
                # A payload class defined after the handler: resolved when the app starts.
                if not isinstance(exc.__cause__, NameError):
                    raise
                plan = None
            self._subscribers.append(
                SubscriberSpec(
                    handler=fn,
                    topics=names,
                    group=group,
                    options=options or ConsumerOptions(),
                    middlewares=chain,
                    name=name,
                    plan=plan,
                )
            )
            return fn

        return register

    def publisher(self, topic: str, *, key: Callable[[Event], str | None] | None = None) -> Callable[[F], F]:
        """Publish the decorated subscriber's return value to ``topic``.

        A ``dict``, an attrs/dataclass/pydantic instance or an :class:`Event` is
        published (``None`` publishes nothing), before the incoming event is acked:
        a failing publish is a handler failure, retried like one. The new event
        keeps the incoming key and tenant (``key=`` overrides the key), carries its
        correlation id and names it as cause, and its id is derived from the
        incoming event's, so a redelivered event republishes the same id.
        """
        validate_topic(topic)

        def register(fn: F) -> F:
            self._publishers.setdefault(fn, []).append(PublisherSpec(topic=topic, key=key))
            return fn

        return register

    def middleware(self, fn: Middleware) -> Middleware:
        """Add an app-wide middleware (outermost first, in registration order)."""
        if not callable(fn):
            raise ConfigurationError(f"middleware must be callable, got {type(fn).__name__}")
        self._middlewares.append(fn)
        return fn

    def on_startup(self, fn: F) -> F:
        """Run ``fn`` (sync or async) at start, after the bus connected, before intake."""
        self._startup.append(fn)
        return fn

    def after_startup(self, fn: F) -> F:
        """Run ``fn`` (sync or async) once every subscription is live (e.g. to start producing)."""
        self._after_startup.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Run ``fn`` (sync or async) at stop, after in-flight work drained, before the bus closes."""
        self._shutdown.append(fn)
        return fn

    @property
    def subscribers(self) -> tuple[SubscriberSpec, ...]:
        return tuple(self._subscribers)

    def publishers_of(self, fn: Callable[..., Any]) -> tuple[PublisherSpec, ...]:
        return tuple(self._publishers.get(fn, ()))

    @property
    def published_topics(self) -> tuple[str, ...]:
        """Topics that ``@app.publisher`` declarations write to."""
        return tuple(dict.fromkeys(p.topic for specs in self._publishers.values() for p in specs))

    # -- running -----------------------------------------------------------------------
    @property
    def bus(self) -> EventBus:
        """The running bus (from start until stop)."""
        if self._bus is None:
            raise BusStateError(
                f"app {self.name!r} is not running; use 'async with app' or dotmac-events run"
            )
        return self._bus

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(b.sub for b in self._bindings if b.sub is not None)

    @property
    def in_flight(self) -> int:
        """Handlers (with their middleware) running right now."""
        return sum(b.in_flight for b in self._bindings)

    def describe_target(self, target: Any = None) -> str:
        target = self.target if target is None else target
        if target is None:
            return "$DOTMAC_EVENTS_URL"
        if isinstance(target, str):
            return redact_url(target)
        return type(target).__name__

    async def start(self, target: str | Mapping[str, Any] | object | None = None) -> None:
        """Connect, run startup hooks, then subscribe; intake begins once this returns.

        ``target`` overrides the app's own for this run. A failure undoes what was
        done so far (shutdown of entered lifespan, bus closed) and is raised.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._state == "running":
                return
            self._state = "starting"
            started = time.perf_counter()
            stack = contextlib.AsyncExitStack()
            try:
                bus = create_bus(target if target is not None else self.target, **self.bus_options)
                await bus.start()
                stack.push_async_callback(bus.close, 0.0)
                self._bus = bus
                log.info(
                    "%s: bus connected (%s, %s)",
                    self.name,
                    bus.transport.name,
                    self.describe_target(target),
                )
                if self._lifespan is not None:
                    await stack.enter_async_context(self._lifespan(self))
                for hook in self._startup:
                    await _call_hook(hook)
                if self._startup or self._lifespan is not None:
                    log.info(
                        "%s: startup done (%d hook(s)%s)",
                        self.name,
                        len(self._startup),
                        ", lifespan entered" if self._lifespan is not None else "",
                    )
                self._bindings = [_Binding(spec) for spec in self._subscribers]
                for binding in self._bindings:
                    binding.call = self._build_call(binding)
                    spec = binding.spec
                    binding.sub = await bus.subscribe(
                        spec.topics, binding.call, group=spec.group, options=spec.options, name=spec.name
                    )
                    log.info(
                        "%s: subscribed %s to %s (group %s)",
                        self.name,
                        spec.title,
                        ",".join(spec.topics),
                        spec.group or "none: broadcast",
                    )
                for hook in self._after_startup:
                    await _call_hook(hook)
            except BaseException:
                self._state = "stopping"
                with contextlib.suppress(Exception):
                    for binding in self._bindings:
                        if binding.sub is not None:
                            await binding.sub.stop(0.0)
                    await self._run_shutdown_hooks()
                await stack.aclose()
                self._bus = None
                self._bindings = []
                self._state = "new"
                raise
            self._exit_stack = stack
            self._state = "running"
            log.info(
                "%s: ready, %d subscription(s) live (%.2fs)",
                self.name,
                len(self._bindings),
                time.perf_counter() - started,
            )

    async def stop(self, grace: float | None = None) -> DrainReport:
        """Stop intake, let in-flight handlers finish within ``grace`` seconds, release
        the rest for redelivery, run shutdown hooks, close the bus. Idempotent."""
        grace = self.grace if grace is None else grace
        if self._state != "running" or self._lock is None:
            return self.last_report or DrainReport(0, 0, 0, 0, 0, 0.0, 0)
        async with self._lock:
            if self._state != "running":
                return self.last_report or DrainReport(0, 0, 0, 0, 0, 0.0, 0)
            self._state = "stopping"
            started = time.perf_counter()
            in_flight = self.in_flight
            log.info(
                "%s: stopping intake; draining %d in-flight handler(s) (grace %.1fs)",
                self.name,
                in_flight,
                grace,
            )
            subs = [b.sub for b in self._bindings if b.sub is not None]
            results = await asyncio.gather(*(s.stop(grace) for s in subs), return_exceptions=True)
            for sub, result in zip(subs, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("%s: stopping %s failed: %r", self.name, sub, result)
            report = DrainReport(
                handled=sum(s.handled for s in subs),
                retried=sum(s.retried for s in subs),
                dead_lettered=sum(s.dead_lettered for s in subs),
                released=sum(s.released for s in subs),
                cancelled=sum(b.cancelled for b in self._bindings),
                seconds=round(time.perf_counter() - started, 3),
                in_flight=in_flight,
            )
            self.last_report = report
            log.info(
                "%s: drained %d of %d in-flight handler(s) in %.2fs (%d cancelled at the grace limit), "
                "%d event(s) released for redelivery; in all %d handled, %d retried, %d dead-lettered",
                self.name,
                report.drained,
                report.in_flight,
                report.seconds,
                report.cancelled,
                report.released,
                report.handled,
                report.retried,
                report.dead_lettered,
            )
            try:
                await self._run_shutdown_hooks()
            finally:
                stack, self._exit_stack = self._exit_stack, None
                try:
                    if stack is not None:
                        await stack.aclose()
                finally:
                    self._bus = None
                    self._state = "stopped"
                    log.info("%s: stopped, bus closed", self.name)
            return report

    async def _run_shutdown_hooks(self) -> None:
        errors = 0
        for hook in self._shutdown:
            try:
                await _call_hook(hook)
            except Exception:
                # One failing hook must not keep the others from releasing their resources.
                errors += 1
                log.exception("%s: shutdown hook %s failed", self.name, getattr(hook, "__qualname__", hook))
        if self._shutdown:
            log.info("%s: shutdown hooks done (%d, %d failed)", self.name, len(self._shutdown), errors)

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- publishing --------------------------------------------------------------------
    async def publish(
        self,
        topic: str | Event,
        payload: Any = None,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        tenant_id: str | None = None,
    ) -> Event:
        """Publish a payload (``dict``, attrs/dataclass/pydantic instance) to ``topic``,
        or an :class:`Event` as it is; returns the event sent.

        Called from a handler, the new event carries the handled event's correlation
        id and names it as its cause.
        """
        if isinstance(topic, Event):
            event = topic
        else:
            cause = _current.get()
            data = unstructure(self.converter, {} if payload is None else payload)
            metadata = (
                EventMetadata()
                if cause is None
                else EventMetadata(
                    correlation_id=cause.metadata.correlation_id or cause.event_id,
                    causation_id=cause.event_id,
                )
            )
            event = Event(
                topic=topic,
                payload=data,
                key=key,
                headers=headers,
                tenant_id=tenant_id if tenant_id is not None or cause is None else cause.tenant_id,
                metadata=metadata,
            )
        await self.bus.publish(event)
        return event

    def _outgoing(self, spec: PublisherSpec, value: Any, cause: Event, index: int) -> Event:
        event_id = str(uuid.uuid5(_ID_NAMESPACE, f"{cause.event_id}/{spec.topic}/{index}"))
        correlation = cause.metadata.correlation_id or cause.event_id
        key = spec.key(cause) if spec.key is not None else cause.key
        if isinstance(value, Event):
            return evolve(
                value,
                topic=spec.topic,
                metadata=evolve(
                    value.metadata,
                    correlation_id=value.metadata.correlation_id or correlation,
                    causation_id=value.metadata.causation_id or cause.event_id,
                ),
            )
        return Event(
            topic=spec.topic,
            payload=unstructure(self.converter, value),
            key=key,
            tenant_id=cause.tenant_id,
            metadata=EventMetadata(
                event_id=event_id, correlation_id=correlation, causation_id=cause.event_id
            ),
        )

    # -- the per-event path --------------------------------------------------------------
    def _build_call(self, binding: _Binding) -> Callable[[Event], Awaitable[Any]]:
        spec = binding.spec
        plan = spec.plan if spec.plan is not None else plan_parameters(spec.handler, self.converter, App)
        handler = _invoker(spec.handler, plan, self)
        publishers = tuple(self._publishers.get(spec.handler, ()))
        if publishers:
            handler = self._with_publishers(handler, publishers)
        chain = handler
        for mw in reversed((*self._middlewares, *spec.middlewares)):
            chain = _link(mw, chain)
        converter = self.converter
        current = _current

        async def call(event: Event) -> Any:
            binding.in_flight += 1
            token = current.set(event)
            try:
                result = await chain(event)
            except asyncio.CancelledError:
                # Cut off by the grace limit (a handler_timeout cancels too, and is a failure).
                if self._state == "stopping":
                    binding.cancelled += 1
                raise
            finally:
                current.reset(token)
                binding.in_flight -= 1
            if result is None or event.metadata.reply_to is None or isinstance(result, (dict, Event)):
                return result
            # A request answered with a typed value: the runner replies with its dict.
            return unstructure(converter, result)

        return call

    def _with_publishers(
        self, handler: Callable[[Event], Awaitable[Any]], publishers: tuple[PublisherSpec, ...]
    ) -> Callable[[Event], Awaitable[Any]]:
        async def publish_result(event: Event) -> Any:
            result = await handler(event)
            if result is not None:
                outgoing = [self._outgoing(p, result, event, i) for i, p in enumerate(publishers)]
                bus = self.bus
                if len(outgoing) == 1:
                    await bus.publish(outgoing[0])
                else:
                    await bus.publish_many(outgoing)
            return result

        return publish_result

    def __repr__(self) -> str:
        return f"<App {self.name} subscribers={len(self._subscribers)} state={self._state}>"


def _link(mw: Middleware, call_next: CallNext) -> CallNext:
    def call(event: Event) -> Awaitable[Any]:
        return mw(event, call_next)

    return call


async def _call_hook(hook: Hook) -> None:
    result = hook()
    if result is not None and asyncio.iscoroutine(result):
        await result


def _invoker(fn: Callable[..., Any], plan: ParamPlan, app: App) -> Callable[[Event], Awaitable[Any]]:
    """The innermost call: structure the payload, fill the parameters, run ``fn``."""
    structure = plan.structure
    sources = plan.sources
    if plan.is_async:
        # The common shapes get a closure of their own: no per-event argument list.
        if sources == (EVENT,):
            return fn
        if structure is not None and sources == (PAYLOAD,):

            async def payload_only(event: Event) -> Any:
                return await fn(structure(event.payload))

            return payload_only
        if structure is not None and sources == (PAYLOAD, EVENT):

            async def payload_event(event: Event) -> Any:
                return await fn(structure(event.payload), event)

            return payload_event

    def arguments(event: Event) -> list[Any]:
        args: list[Any] = []
        for source in sources:
            if source == EVENT:
                args.append(event)
            elif source == BUS:
                args.append(app.bus)
            elif source == APP:
                args.append(app)
            else:
                assert structure is not None
                args.append(structure(event.payload))
        return args

    if plan.is_async:

        async def general(event: Event) -> Any:
            return await fn(*arguments(event))

        return general

    async def in_thread(event: Event) -> Any:
        # Structuring errors surface here, before a thread is taken.
        args = arguments(event)
        return await asyncio.to_thread(fn, *args)

    return in_thread
