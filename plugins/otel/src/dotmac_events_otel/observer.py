"""The OpenTelemetry observer: PRODUCER/CONSUMER spans, context propagation, metrics."""

from __future__ import annotations

import contextvars
import logging
import weakref
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from dotmac.events import ConsumeInfo, hookimpl
from dotmac.events.errors import ConfigurationError, HeaderValidationError
from dotmac.events.event import (
    MAX_HEADER_COUNT,
    MAX_HEADERS_TOTAL,
    RESERVED_HEADER_PREFIXES,
    validate_header_name,
    validate_header_value,
)
from dotmac.events.metrics import (
    DEFAULT_MAX_TENANTS,
    DEFAULT_MAX_TOPICS,
    DURATION_BUCKETS,
    LAG_METRIC,
    LabelPolicy,
    LagSampler,
    topic_template,
)

from . import attributes as a

if TYPE_CHECKING:
    from dotmac.events import Event, Message, PublishInfo

__all__ = ["INSTRUMENTATION_SCOPE", "METRIC_NAMES", "SEMCONV_METRIC_NAMES", "OtelObserver"]

log = logging.getLogger(__name__)

INSTRUMENTATION_SCOPE = "dotmac_events_otel"
METRIC_NAMES = (
    "events_published_total",
    "events_consumed_total",
    "event_publish_duration_seconds",
    "event_consume_duration_seconds",
    "events_retried_total",
    "events_dlq_total",
)
# The OpenTelemetry messaging semantic conventions' names, recorded beside the seed's
# events_* series (which stay for dashboards built on them): seed name -> convention.
SEMCONV_METRIC_NAMES = {
    "events_published_total": "messaging.client.sent.messages",
    "event_publish_duration_seconds": "messaging.client.operation.duration",
    "events_consumed_total": "messaging.client.consumed.messages",
    "event_consume_duration_seconds": "messaging.process.duration",
}
MAX_EXCEPTION_MESSAGE = 1024

try:
    _VERSION = version("dotmac-events-otel")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0.0.0"


def _destination(topic: str, attrs: dict[str, Any]) -> str:
    """Fill the destination attributes; return the low-cardinality name for span names."""
    attrs[a.MESSAGING_DESTINATION_NAME] = topic
    template = topic_template(topic)
    if template != topic:
        attrs[a.MESSAGING_DESTINATION_TEMPLATE] = template
        attrs[a.MESSAGING_DESTINATION_TEMPORARY] = True
    return template


def _server(info: PublishInfo | ConsumeInfo, attrs: dict[str, Any]) -> None:
    if info.server_address is not None:
        attrs[a.SERVER_ADDRESS] = info.server_address
        if info.server_port is not None:
            attrs[a.SERVER_PORT] = info.server_port


def _check_type(name: str, value: object, expected: type) -> None:
    if value is not None and not isinstance(value, expected):
        raise ConfigurationError(
            f"{name} must be an OpenTelemetry {expected.__name__}, got {type(value).__name__}"
        )


def _describe(error: BaseException) -> str:
    return f"{type(error).__qualname__}: {error}"[:MAX_EXCEPTION_MESSAGE]


class OtelObserver:
    """Traces and measures every publish and delivery of the buses it observes.

    Installed as a plugin it is loaded process-wide (see :mod:`dotmac_events_otel`)
    and uses the global tracer provider, meter provider and propagator, whichever the
    application sets (before or after the bus starts). Build one yourself to pass
    explicit providers to one bus::

        bus = create_bus(url, observers=[OtelObserver(tracer_provider=tp, meter_provider=mp)])

    An explicit observer replaces the process-wide plugin on that bus, so spans and
    metrics are never recorded twice.

    Tracing (``tracing=True``): a PRODUCER span ``publish <topic>`` per published event,
    whose W3C ``traceparent``/``tracestate`` (and baggage, with the default
    propagators) travel in the event headers; a CONSUMER span ``process <topic>``
    per delivery, child of the producer's span, current while the handler runs (its
    spans and the reply of a request become children), with retries and
    dead-lettering as span events and a failed handling as error status.

    Metrics (``metrics=True``): the six series of
    :mod:`dotmac.events.metrics` with the same names and attribute keys, through the
    OpenTelemetry metrics API. ``tenant_metrics`` adds a ``tenant`` attribute;
    ``max_topics``/``max_tenants`` cap distinct values (beyond the cap: ``__other__``).
    """

    # The entry-point name of the process-wide instance (see observe.Observers).
    replaces_plugins: tuple[str, ...] = ("otel",)

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
        propagator: TextMapPropagator | None = None,
        tracing: bool = True,
        metrics: bool = True,
        tenant_metrics: bool = False,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_tenants: int = DEFAULT_MAX_TENANTS,
    ) -> None:
        _check_type("tracer_provider", tracer_provider, trace.TracerProvider)
        _check_type("meter_provider", meter_provider, otel_metrics.MeterProvider)
        _check_type("propagator", propagator, TextMapPropagator)
        self.tracing = bool(tracing)
        self.metrics = bool(metrics)
        self._propagator = propagator
        self._labels = LabelPolicy(
            tenant_metrics=tenant_metrics, max_topics=max_topics, max_tenants=max_tenants
        )
        self.tenant_metrics = self._labels.tenant_metrics
        # One per observer: which CONSUMER span the hooks of the current delivery belong to.
        self._current: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
            f"dotmac_events_otel_span_{id(self):x}", default=None
        )
        self._warned_headers = False
        # Without explicit providers these are proxies that follow the global providers,
        # even ones set after this observer was built.
        self._tracer = trace.get_tracer(INSTRUMENTATION_SCOPE, _VERSION, tracer_provider=tracer_provider)
        meter = otel_metrics.get_meter(INSTRUMENTATION_SCOPE, _VERSION, meter_provider=meter_provider)
        self._published = meter.create_counter(
            "events_published_total", unit="{event}", description="Events published"
        )
        self._consumed = meter.create_counter(
            "events_consumed_total", unit="{event}", description="Events consumed"
        )
        self._publish_duration = meter.create_histogram(
            "event_publish_duration_seconds",
            unit="s",
            description="Time to publish an event",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._consume_duration = meter.create_histogram(
            "event_consume_duration_seconds",
            unit="s",
            description="Time to handle an event, retries included",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._retried = meter.create_counter(
            "events_retried_total", unit="{event}", description="Handler calls that failed and were retried"
        )
        self._dead_lettered = meter.create_counter(
            "events_dlq_total", unit="{event}", description="Events written to a dead-letter topic"
        )
        self._sent = meter.create_counter(
            SEMCONV_METRIC_NAMES["events_published_total"], unit="{message}", description="Messages sent"
        )
        self._operation_duration = meter.create_histogram(
            SEMCONV_METRIC_NAMES["event_publish_duration_seconds"],
            unit="s",
            description="Duration of the send operation",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._received = meter.create_counter(
            SEMCONV_METRIC_NAMES["events_consumed_total"],
            unit="{message}",
            description="Messages delivered to a handler",
        )
        self._process_duration = meter.create_histogram(
            SEMCONV_METRIC_NAMES["event_consume_duration_seconds"],
            unit="s",
            description="Duration of processing a message, retries included",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._lag_samplers: weakref.WeakSet[LagSampler] = weakref.WeakSet()
        self._lag_gauge: Any = None
        self._meter = meter

    def observe_lag(self, sampler: LagSampler) -> None:
        """Report ``sampler``'s figures as the observable gauge ``events_consumer_lag``
        (attributes ``topic``, ``consumer_group``), read at each metric collection."""
        self._lag_samplers.add(sampler)
        if self._lag_gauge is None:
            self._lag_gauge = self._meter.create_observable_gauge(
                LAG_METRIC,
                callbacks=[self._observe_lag],
                unit="{event}",
                description="Events of a topic not yet handed to a consumer group",
            )

    def _observe_lag(self, _options: otel_metrics.CallbackOptions) -> Iterable[otel_metrics.Observation]:
        for sampler in list(self._lag_samplers):
            for (topic, group), lag in sampler.lag().items():
                yield otel_metrics.Observation(lag, {"topic": topic, "consumer_group": group})

    def __repr__(self) -> str:
        return (
            f"<OtelObserver tracing={self.tracing} metrics={self.metrics} "
            f"tenant_metrics={self.tenant_metrics}>"
        )

    # -- helpers -----------------------------------------------------------------------
    @property
    def propagator(self) -> TextMapPropagator:
        return self._propagator if self._propagator is not None else propagate.get_global_textmap()

    def _carrier_headers(self, event: Event, carrier: dict[str, str]) -> dict[str, str]:
        """The injected headers that can join ``event``'s without breaking its limits.

        Tracing must never make a valid publish fail, so anything that would (too many
        headers, a malformed value from a custom propagator) is left out, with a warning.
        """
        headers = event.headers
        if headers:
            # A re-published event carries the fields of its first trace: blank the ones
            # the current context does not set, or they would mix with the new traceparent.
            for name in self.propagator.fields:
                if name in headers and name not in carrier:
                    carrier[name] = ""
        if not carrier:
            return carrier
        count = len(headers)
        total = sum(len(k) + len(v) for k, v in headers.items())
        merged: dict[str, str] = {}
        for name, value in carrier.items():
            try:
                validate_header_name(name)
                validate_header_value(value, field_name=name)
            except HeaderValidationError as exc:
                self._warn_headers(f"left out the {name!r} header: {exc}")
                continue
            lowered = name.lower()
            if lowered == "content-type" or lowered.startswith(RESERVED_HEADER_PREFIXES):
                self._warn_headers(f"left out the reserved {name!r} header")
                continue
            if name in headers:
                total -= len(name) + len(headers[name])
            else:
                count += 1
            total += len(name) + len(value)
            merged[name] = value
        if count > MAX_HEADER_COUNT or total > MAX_HEADERS_TOTAL:
            self._warn_headers(
                f"the event on {event.topic!r} has no room for {sorted(merged)}; "
                "its consumers will start new traces"
            )
            return {}
        return merged

    def _warn_headers(self, text: str) -> None:
        if not self._warned_headers:
            self._warned_headers = True
            log.warning("trace context not propagated: %s (logged once)", text)
        else:
            log.debug("trace context not propagated: %s", text)

    def _publish_attributes(self, event: Event, info: PublishInfo) -> tuple[str, dict[str, Any]]:
        attrs: dict[str, Any] = {
            a.MESSAGING_SYSTEM: info.transport,
            a.MESSAGING_OPERATION_TYPE: "send",
            a.MESSAGING_OPERATION_NAME: "publish",
            a.MESSAGING_MESSAGE_ID: event.metadata.event_id,
        }
        destination = _destination(info.topic, attrs)
        _server(info, attrs)
        if info.batch_size > 1:
            attrs[a.MESSAGING_BATCH_MESSAGE_COUNT] = info.batch_size
        self._common(event.key, event.tenant_id, event.metadata.correlation_id, info.transport, attrs)
        return destination, attrs

    def _consume_attributes(
        self, event: Event | None, info: ConsumeInfo, message: Message | None = None
    ) -> tuple[str, dict[str, Any]]:
        attrs: dict[str, Any] = {
            a.MESSAGING_SYSTEM: info.transport,
            a.MESSAGING_OPERATION_TYPE: "process",
            a.MESSAGING_OPERATION_NAME: "process",
            a.MESSAGING_CLIENT_ID: info.consumer,
            a.DOTMAC_DELIVERY_COUNT: info.delivery_count,
        }
        destination = _destination(info.topic, attrs)
        _server(info, attrs)
        if info.group is not None:
            attrs[a.MESSAGING_CONSUMER_GROUP_NAME] = info.group
        position = info.position
        if position is not None:
            attrs[a.DOTMAC_POSITION] = position
            if info.transport == "kafka":
                partition, _, offset = position.partition(":")
                if partition and offset.isdigit():
                    attrs[a.MESSAGING_DESTINATION_PARTITION_ID] = partition
                    attrs[a.MESSAGING_KAFKA_OFFSET] = int(offset)
        if event is not None:
            attrs[a.MESSAGING_MESSAGE_ID] = event.metadata.event_id
            self._common(event.key, event.tenant_id, event.metadata.correlation_id, info.transport, attrs)
        elif message is not None:
            # Undecodable: only what the raw envelope says.
            headers = message.headers
            event_id = headers.get("ce_id")
            if event_id is not None:
                attrs[a.MESSAGING_MESSAGE_ID] = event_id
            tenant = headers.get("ce_tenantid")
            correlation = headers.get("ce_correlationid")
            self._common(message.key, tenant, correlation, info.transport, attrs)
        return destination, attrs

    @staticmethod
    def _common(
        key: str | None, tenant: str | None, correlation: str | None, transport: str, attrs: dict[str, Any]
    ) -> None:
        if tenant is not None:
            attrs[a.DOTMAC_TENANT_ID] = tenant
        if correlation is not None:
            attrs[a.MESSAGING_MESSAGE_CONVERSATION_ID] = correlation
        if key is not None and transport == "kafka":
            attrs[a.MESSAGING_KAFKA_MESSAGE_KEY] = key

    def _metric_attributes(
        self, info: PublishInfo | ConsumeInfo, event: Event | None, message: Message | None = None
    ) -> dict[str, str]:
        attrs = {"topic": self._labels.topic(info.topic), "transport": info.transport}
        if isinstance(info, ConsumeInfo):
            attrs["consumer_group"] = info.group or ""
        if self.tenant_metrics:
            attrs["tenant"] = self._labels.tenant(event, message)
        return attrs

    @staticmethod
    def _semconv_attributes(
        info: PublishInfo | ConsumeInfo, seed: dict[str, str], operation: str, error: BaseException | None
    ) -> dict[str, str]:
        # The same bounded topic and tenant values as the seed series, under the
        # conventions' attribute names.
        attrs = {
            a.MESSAGING_SYSTEM: info.transport,
            a.MESSAGING_OPERATION_NAME: operation,
            a.MESSAGING_DESTINATION_NAME: seed["topic"],
        }
        if seed.get("consumer_group"):
            attrs[a.MESSAGING_CONSUMER_GROUP_NAME] = seed["consumer_group"]
        if "tenant" in seed:
            attrs[a.DOTMAC_TENANT_ID] = seed["tenant"]
        if error is not None:
            attrs[a.ERROR_TYPE] = type(error).__qualname__
        return attrs

    # -- tracing hooks -----------------------------------------------------------------
    @hookimpl
    def dotmac_events_publish_context(self, event: Event, info: PublishInfo) -> _PublishScope | None:
        if not self.tracing:
            return None
        return _PublishScope(self, event, info)

    @hookimpl
    def dotmac_events_consume_context(self, event: Event, info: ConsumeInfo) -> _ConsumeScope | None:
        if not self.tracing:
            return None
        return _ConsumeScope(self, event, info)

    # -- outcome hooks -----------------------------------------------------------------
    @hookimpl
    def dotmac_events_on_publish(
        self, event: Event, info: PublishInfo, duration: float, outcome: str, error: BaseException | None
    ) -> None:
        if not self.metrics:
            return
        attrs = self._metric_attributes(info, event)
        attrs["outcome"] = outcome
        self._published.add(1, attrs)
        self._publish_duration.record(duration, attrs)
        semconv = self._semconv_attributes(info, attrs, "publish", error)
        self._sent.add(1, semconv)
        self._operation_duration.record(duration, semconv)

    @hookimpl
    def dotmac_events_on_consume(
        self,
        event: Event,
        info: ConsumeInfo,
        duration: float,
        outcome: str,
        error: BaseException | None,
        attempts: int,
    ) -> None:
        span = self._current.get()
        if span is not None:
            span.set_attribute(a.DOTMAC_OUTCOME, outcome)
            span.set_attribute(a.DOTMAC_ATTEMPTS, attempts)
            if error is not None:
                span.set_attribute(a.ERROR_TYPE, type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, _describe(error)))
        if self.metrics:
            attrs = self._metric_attributes(info, event)
            attrs["outcome"] = outcome
            self._consumed.add(1, attrs)
            self._consume_duration.record(duration, attrs)
            semconv = self._semconv_attributes(info, attrs, "process", error)
            self._received.add(1, semconv)
            self._process_duration.record(duration, semconv)

    @hookimpl
    def dotmac_events_on_retry(
        self, event: Event, info: ConsumeInfo, attempt: int, delay: float, error: BaseException
    ) -> None:
        span = self._current.get()
        if span is not None:
            span.add_event(
                a.EVENT_RETRY,
                {
                    a.DOTMAC_ATTEMPT: attempt,
                    a.DOTMAC_RETRY_DELAY: delay,
                    a.EXCEPTION_TYPE: type(error).__qualname__,
                    a.EXCEPTION_MESSAGE: str(error)[:MAX_EXCEPTION_MESSAGE],
                },
            )
        if self.metrics:
            attrs = self._metric_attributes(info, event)
            self._retried.add(1, attrs)

    @hookimpl
    def dotmac_events_on_dead_letter(
        self,
        event: Event | None,
        message: Message,
        info: ConsumeInfo,
        dlq_topic: str,
        reason: str,
        error: BaseException | None,
        attempts: int,
    ) -> None:
        if self.tracing:
            self._trace_dead_letter(event, message, info, dlq_topic, reason, error, attempts)
        if self.metrics:
            attrs = self._metric_attributes(info, event, message)
            attrs["reason"] = reason
            self._dead_lettered.add(1, attrs)

    def _trace_dead_letter(
        self,
        event: Event | None,
        message: Message,
        info: ConsumeInfo,
        dlq_topic: str,
        reason: str,
        error: BaseException | None,
        attempts: int,
    ) -> None:
        details: dict[str, Any] = {
            a.DOTMAC_DLQ_TOPIC: dlq_topic,
            a.DOTMAC_DLQ_REASON: reason,
            a.DOTMAC_ATTEMPTS: attempts,
        }
        if error is not None:
            details[a.EXCEPTION_TYPE] = type(error).__qualname__
            details[a.EXCEPTION_MESSAGE] = str(error)[:MAX_EXCEPTION_MESSAGE]
        span = self._current.get()
        if span is not None:
            span.add_event(a.EVENT_DEAD_LETTER, details)
            return
        # Dead-lettered before handling began (undecodable, too many deliveries): no
        # CONSUMER span is open, so record a short one that still joins the producer's trace.
        destination, attrs = self._consume_attributes(event, info, message)
        attrs[a.DOTMAC_OUTCOME] = "dead_letter"
        attrs[a.DOTMAC_ATTEMPTS] = attempts
        parent = self.propagator.extract(message.headers, context=Context())
        span = self._tracer.start_span(
            f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=attrs
        )
        span.add_event(a.EVENT_DEAD_LETTER, details)
        span.set_attribute(a.ERROR_TYPE, type(error).__qualname__ if error is not None else reason)
        span.set_status(Status(StatusCode.ERROR, _describe(error) if error is not None else reason))
        span.end()

    @hookimpl
    def dotmac_events_on_error(self, where: str, error: BaseException, info: Mapping[str, Any]) -> None:
        span = self._current.get()
        if span is not None:
            span.record_exception(error, attributes={"dotmac.events.where": where})


class _PublishScope:
    """The PRODUCER span of one publish; ``__enter__`` returns the headers to inject."""

    __slots__ = ("_event", "_info", "_observer", "_span", "_token")

    def __init__(self, observer: OtelObserver, event: Event, info: PublishInfo) -> None:
        self._observer = observer
        self._event = event
        self._info = info
        self._span: Span | None = None
        self._token: contextvars.Token[Context] | None = None

    def __enter__(self) -> dict[str, str] | None:
        observer = self._observer
        event = self._event
        try:
            destination, attrs = observer._publish_attributes(event, self._info)
            propagator = observer.propagator
            links: list[Link] = []
            if event.headers:
                # A re-published event (DLQ replay, forwarding) links to the trace it came from.
                previous = trace.get_current_span(propagator.extract(event.headers, context=Context()))
                previous_context = previous.get_span_context()
                if previous_context.is_valid:
                    links.append(Link(previous_context))
            parent = otel_context.get_current()
            span = observer._tracer.start_span(
                f"publish {destination}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes=attrs,
                links=links,
            )
            self._span = span
            ctx = trace.set_span_in_context(span, parent)
            carrier: dict[str, str] = {}
            propagator.inject(carrier, context=ctx)
            if self._info.batch_size == 1:
                # Current while the transport sends, so instrumented client libraries
                # nest under it. Not for batches: each event's span would nest in the last.
                self._token = otel_context.attach(ctx)
            return observer._carrier_headers(event, carrier)
        except Exception:  # tracing must never break a publish
            log.exception("could not start the publish span of %s", event.topic)
            return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        span = self._span
        if span is None:
            return
        if exc is not None:
            span.set_attribute(a.ERROR_TYPE, type(exc).__qualname__)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, _describe(exc)))
        span.end()


class _ConsumeScope:
    """The CONSUMER span of one delivery, current for every attempt of the handler."""

    __slots__ = ("_event", "_info", "_observer", "_span", "_token", "_var_token")

    def __init__(self, observer: OtelObserver, event: Event, info: ConsumeInfo) -> None:
        self._observer = observer
        self._event = event
        self._info = info
        self._span: Span | None = None
        self._token: contextvars.Token[Context] | None = None
        self._var_token: contextvars.Token[Span | None] | None = None

    def __enter__(self) -> Span | None:
        observer = self._observer
        try:
            destination, attrs = observer._consume_attributes(self._event, self._info)
            # Only the message decides the parent: the worker's own context (whatever
            # was current when the subscription started) must not adopt every delivery.
            parent = observer.propagator.extract(self._event.headers, context=Context())
            span = observer._tracer.start_span(
                f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=attrs
            )
            self._span = span
            self._token = otel_context.attach(trace.set_span_in_context(span, parent))
            self._var_token = observer._current.set(span)
            return span
        except Exception:  # tracing must never break consumption
            log.exception("could not start the process span of %s", self._info.topic)
            return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._var_token is not None:
            self._observer._current.reset(self._var_token)
        if self._token is not None:
            otel_context.detach(self._token)
        span = self._span
        if span is None:
            return
        if exc is not None:
            # Cancelled (shutdown): the event was released for redelivery, not failed.
            span.set_attribute(a.DOTMAC_OUTCOME, "released")
        span.end()
