"""Prometheus metrics through the observer hooks, without a hard dependency.

``create_dotmac_observability_hooks(metrics_registry=CollectorRegistry())`` returns an
observer for ``create_bus(..., observers=[hooks])``. ``prometheus_client`` is imported
only here, when you ask for it.

The six series and their labels (the OpenTelemetry plugin records the same names
and labels through the OpenTelemetry metrics API):

=================================  ======================================================
``events_published_total``         topic, transport, outcome (success / error)
``event_publish_duration_seconds`` topic, transport, outcome
``events_consumed_total``          topic, transport, consumer_group, outcome
                                   (success / dead_letter / released / retry)
``event_consume_duration_seconds`` topic, transport, consumer_group, outcome
``events_retried_total``           topic, transport, consumer_group
``events_dlq_total``               topic, transport, consumer_group, reason
=================================  ======================================================

Each gets a ``tenant`` label when ``tenant_metrics=True``. ``consumer_group`` is empty
for broadcast subscriptions, ``tenant`` for events without a tenant.

Consumer lag is a gauge, ``events_consumer_lag`` (labels topic, consumer_group): the
events of a topic a group has not been handed yet. The broker is asked for it by a
:class:`LagSampler` every few seconds (never on the scrape itself); register it with
:func:`register_lag_collector` (prometheus_client) or ``OtelObserver.observe_lag``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .bus import REPLY_TOPIC_PREFIX
from .errors import ConfigurationError, InvalidTenantError
from .event import validate_tenant_id
from .plugins import hookimpl
from .transport import GroupInfo

if TYPE_CHECKING:
    from .bus import EventBus
    from .event import Event
    from .observe import ConsumeInfo, PublishInfo
    from .transport import Message

__all__ = [
    "DURATION_BUCKETS",
    "OTHER",
    "REPLY_TOPIC_PREFIX",
    "REPLY_TOPIC_TEMPLATE",
    "LabelCap",
    "ALL_TOPICS",
    "LagSampler",
    "PrometheusObserver",
    "create_dotmac_observability_hooks",
    "register_lag_collector",
    "topic_template",
]

log = logging.getLogger(__name__)

OTHER = "__other__"
"""Label value that replaces topics/tenants beyond the configured cap (and invalid tenants)."""

REPLY_TOPIC_TEMPLATE = "dotmac.reply.{bus}"
"""Every bus has its own reply topic; they are reported under this one name so that
request-reply does not add a label value (or a span name) per process."""

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bucket bounds in seconds, shared by both metrics integrations."""

DEFAULT_MAX_TOPICS = 200
DEFAULT_MAX_TENANTS = 200


def topic_template(topic: str) -> str:
    """The low-cardinality name of ``topic``: per-bus reply topics collapse to one."""
    return REPLY_TOPIC_TEMPLATE if topic.startswith(REPLY_TOPIC_PREFIX) else topic


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an int >= 0, got {value!r}")
    return value


class LabelCap:
    """Admits at most ``limit`` distinct values; later ones map to ``__other__``.

    Values admitted once keep their own label for the life of the process, so a
    flood of new names costs at most ``limit`` label values, never memory per name.
    """

    def __init__(self, limit: int) -> None:
        self.limit = _check_limit("limit", limit)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return ""
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER

    def __len__(self) -> int:
        return len(self._seen)


class LabelPolicy:
    """Turns topics and tenants into bounded label values (shared by both integrations)."""

    def __init__(
        self,
        *,
        tenant_metrics: bool = False,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_tenants: int = DEFAULT_MAX_TENANTS,
    ) -> None:
        self.tenant_metrics = bool(tenant_metrics)
        self.topics = LabelCap(_check_limit("max_topics", max_topics))
        self.tenants = LabelCap(_check_limit("max_tenants", max_tenants))

    def topic(self, topic: str) -> str:
        return self.topics(topic_template(topic))

    def tenant(self, event: Event | None, message: Message | None = None) -> str:
        """The tenant label: the event's tenant, else the raw message's (validated)."""
        if event is not None:
            return self.tenants(event.tenant_id)
        raw = message.headers.get("ce_tenantid") if message is not None else None
        if raw is None:
            return ""
        try:
            # An undecodable message's header is untrusted input: never a label as is.
            validate_tenant_id(raw)
        except InvalidTenantError:
            return OTHER
        return self.tenants(raw)


# One observer per registry: a second call with the same registry returns the first
# observer instead of failing on duplicated series.
_observers: weakref.WeakKeyDictionary[Any, PrometheusObserver] = weakref.WeakKeyDictionary()
_observers_lock = threading.Lock()


class PrometheusObserver:
    """Observer plugin that records the six dotmac-events series in a registry."""

    def __init__(
        self,
        metrics_registry: Any = None,
        *,
        tenant_metrics: bool = False,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_tenants: int = DEFAULT_MAX_TENANTS,
        namespace: str = "",
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ConfigurationError(
                'Prometheus metrics need prometheus_client: pip install "dotmac-events[prometheus]"'
            ) from exc
        # No reference to the registry is kept: the per-registry cache below is weak.
        registry = metrics_registry if metrics_registry is not None else prom.REGISTRY
        self.labels = LabelPolicy(
            tenant_metrics=tenant_metrics, max_topics=max_topics, max_tenants=max_tenants
        )
        self.tenant_metrics = self.labels.tenant_metrics
        self.namespace = namespace
        tenant = ("tenant",) if self.tenant_metrics else ()
        pub_labels = ("topic", "transport", "outcome", *tenant)
        con_labels = ("topic", "transport", "consumer_group", "outcome", *tenant)
        kw: dict[str, Any] = {"registry": registry, "namespace": namespace}
        try:
            self.published = prom.Counter("events_published_total", "Events published", pub_labels, **kw)
            self.consumed = prom.Counter("events_consumed_total", "Events consumed", con_labels, **kw)
            self.publish_duration = prom.Histogram(
                "event_publish_duration_seconds",
                "Time to publish an event",
                pub_labels,
                buckets=DURATION_BUCKETS,
                **kw,
            )
            self.consume_duration = prom.Histogram(
                "event_consume_duration_seconds",
                "Time to handle an event, retries included",
                con_labels,
                buckets=DURATION_BUCKETS,
                **kw,
            )
            self.retried = prom.Counter(
                "events_retried_total",
                "Handler calls that failed and were retried",
                ("topic", "transport", "consumer_group", *tenant),
                **kw,
            )
            self.dead_lettered = prom.Counter(
                "events_dlq_total",
                "Events written to a dead-letter topic",
                ("topic", "transport", "consumer_group", "reason", *tenant),
                **kw,
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"the dotmac-events series already exist in this registry ({exc}); "
                "use create_dotmac_observability_hooks(), which returns the registry's existing observer"
            ) from exc

    def _settings(self) -> tuple[Any, ...]:
        return (self.tenant_metrics, self.labels.topics.limit, self.labels.tenants.limit, self.namespace)

    def _tenant(self, event: Event | None, message: Message | None = None) -> tuple[str, ...]:
        if not self.tenant_metrics:
            return ()
        return (self.labels.tenant(event, message),)

    @hookimpl
    def dotmac_events_on_publish(
        self, event: Event, info: PublishInfo, duration: float, outcome: str, error: BaseException | None
    ) -> None:
        labels = (self.labels.topic(info.topic), info.transport, outcome, *self._tenant(event))
        self.published.labels(*labels).inc()
        self.publish_duration.labels(*labels).observe(duration)

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
        labels = (
            self.labels.topic(info.topic),
            info.transport,
            info.group or "",
            outcome,
            *self._tenant(event),
        )
        self.consumed.labels(*labels).inc()
        self.consume_duration.labels(*labels).observe(duration)

    @hookimpl
    def dotmac_events_on_retry(
        self, event: Event, info: ConsumeInfo, attempt: int, delay: float, error: BaseException
    ) -> None:
        self.retried.labels(
            self.labels.topic(info.topic), info.transport, info.group or "", *self._tenant(event)
        ).inc()

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
        self.dead_lettered.labels(
            self.labels.topic(info.topic),
            info.transport,
            info.group or "",
            reason,
            *self._tenant(event, message),
        ).inc()

    def __repr__(self) -> str:
        return f"<PrometheusObserver tenant_metrics={self.tenant_metrics} namespace={self.namespace!r}>"


def create_dotmac_observability_hooks(
    metrics_registry: Any = None,
    tenant_metrics: bool = False,
    *,
    max_topics: int = DEFAULT_MAX_TOPICS,
    max_tenants: int = DEFAULT_MAX_TENANTS,
    namespace: str = "",
) -> PrometheusObserver:
    """Observer recording ``events_published_total``, ``events_consumed_total``,
    ``event_publish_duration_seconds``, ``event_consume_duration_seconds``,
    ``events_retried_total`` and ``events_dlq_total`` into ``metrics_registry`` (a
    ``prometheus_client.CollectorRegistry``; the default registry when ``None``).

    Pass it to ``create_bus(..., observers=[hooks])``; one observer serves any number
    of buses, and calling this again with the same registry returns the same observer.
    ``tenant_metrics`` adds a ``tenant`` label; ``max_topics``/``max_tenants`` cap label
    values (beyond the cap they are counted as ``__other__``) so a flood of names cannot
    exhaust memory. Per-bus reply topics are counted as ``dotmac.reply.{bus}``.
    Raises :class:`~dotmac.events.errors.ConfigurationError` when prometheus_client is
    missing, a limit is not a non-negative int, or the registry already holds an
    observer with different settings.
    """
    if metrics_registry is None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ConfigurationError(
                'Prometheus metrics need prometheus_client: pip install "dotmac-events[prometheus]"'
            ) from exc
        metrics_registry = prom.REGISTRY
    with _observers_lock:
        existing = _observers.get(metrics_registry)
        if existing is not None:
            wanted = (bool(tenant_metrics), max_topics, max_tenants, namespace)
            if existing._settings() != wanted:
                raise ConfigurationError(
                    "this registry already has dotmac-events metrics with other settings "
                    f"(tenant_metrics, max_topics, max_tenants, namespace = {existing._settings()!r})"
                )
            return existing
        observer = PrometheusObserver(
            metrics_registry,
            tenant_metrics=tenant_metrics,
            max_topics=max_topics,
            max_tenants=max_tenants,
            namespace=namespace,
        )
        _observers[metrics_registry] = observer
        return observer


DEFAULT_MAX_GROUPS = 200
ALL_TOPICS = "*"
"""The key of :attr:`LagSampler.errors` under which a failed topic listing is reported."""
LAG_METRIC = "events_consumer_lag"


class LagSampler:
    """Polls :meth:`EventBus.groups` and keeps the latest lag of each topic and group.

    ``topics`` are the topics to watch; without them, the topics of the bus's group
    subscriptions (looked up at every refresh, so later subscriptions are included), or
    with ``all_topics=True`` every topic on the broker (:meth:`EventBus.topics`, listed
    again at every refresh; a failed listing is reported under :data:`ALL_TOPICS` in
    ``errors`` and the previous listing is kept).
    :meth:`refresh` asks the broker once; ``async with sampler:`` (or :meth:`start`)
    refreshes every ``interval`` seconds in a task of the bus's event loop.

    Label values are bounded: beyond ``max_topics`` topics or ``max_groups`` groups
    the figures are summed under ``__other__``. A topic whose groups cannot be listed
    (broker down) loses its figures until it answers again: a stale lag would say
    that consumers keep up when nobody can tell. ``groups`` keeps the last reports
    in full (members, pending, oldest pending age) for pages and probes.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        topics: Iterable[str] | None = None,
        interval: float = 15.0,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_groups: int = DEFAULT_MAX_GROUPS,
        all_topics: bool = False,
    ) -> None:
        if all_topics and topics is not None:
            raise ConfigurationError("LagSampler takes topics or all_topics=True, not both")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise ConfigurationError(f"interval must be a number of seconds > 0, got {interval!r}")
        self.bus = bus
        self._topics = None if topics is None else tuple(topics)
        self.all_topics = bool(all_topics)
        self._listed: tuple[str, ...] = ()
        self.interval = float(interval)
        self._topic_cap = LabelCap(_check_limit("max_topics", max_topics))
        self._group_cap = LabelCap(_check_limit("max_groups", max_groups))
        self.groups: dict[str, tuple[GroupInfo, ...]] = {}
        self.errors: dict[str, str] = {}
        self.refreshed_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def topics(self) -> list[str]:
        if self._topics is not None:
            return list(self._topics)
        if self.all_topics:
            return list(self._listed)
        found = {
            topic
            for sub in self.bus.subscriptions
            if sub.group is not None
            for topic in sub.topics
            if not topic.startswith(REPLY_TOPIC_PREFIX)
        }
        return sorted(found)

    async def refresh(self) -> None:
        """Ask the broker for the groups of every watched topic (one topic at a time)."""
        if self.all_topics:
            await self._list_topics()
        for topic in self.topics():
            try:
                infos = tuple(await self.bus.groups(topic))
            except Exception as exc:
                if topic not in self.errors:
                    log.warning("cannot list the consumer groups of %s: %s", topic, exc)
                self.errors[topic] = f"{type(exc).__name__}: {exc}"
                self.groups.pop(topic, None)
                continue
            self.errors.pop(topic, None)
            self.groups[topic] = infos
        self.refreshed_at = time.time()

    async def _list_topics(self) -> None:
        try:
            listed = tuple(await self.bus.topics())
        except Exception as exc:
            if ALL_TOPICS not in self.errors:
                log.warning("cannot list the topics: %s", exc)
            self.errors[ALL_TOPICS] = f"{type(exc).__name__}: {exc}"
            return
        self.errors.pop(ALL_TOPICS, None)
        for gone in set(self._listed) - set(listed):
            self.groups.pop(gone, None)
            self.errors.pop(gone, None)
        self._listed = listed

    def lag(self) -> dict[tuple[str, str], int]:
        """``{(topic label, group label): lag}`` with bounded labels; unknown lags left out."""
        figures: dict[tuple[str, str], int] = {}
        for topic, infos in self.groups.items():
            for info in infos:
                if info.lag is None:
                    continue
                key = (self._topic_cap(topic_template(topic)), self._group_cap(info.group))
                figures[key] = figures.get(key, 0) + info.lag
        return figures

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug in a transport must not end the sampling for good
                log.exception("consumer lag refresh failed")
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        if self._task is None:
            await self.refresh()
            self._task = asyncio.create_task(self._run(), name="dotmac-events-lag-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> LagSampler:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<LagSampler topics={self._topics!r} interval={self.interval}>"


class _LagCollector:
    def __init__(self, sampler: LagSampler, name: str) -> None:
        self._sampler = sampler
        self._name = name

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            self._name,
            "Events of a topic not yet handed to a consumer group",
            labels=("topic", "consumer_group"),
        )
        for (topic, group), lag in sorted(self._sampler.lag().items()):
            family.add_metric((topic, group), lag)
        yield family

    def describe(self) -> Iterator[Any]:
        # An empty description keeps registration from calling collect() (no figures yet).
        return iter(())


def register_lag_collector(sampler: LagSampler, metrics_registry: Any = None, *, namespace: str = "") -> Any:
    """Expose ``sampler``'s figures as the gauge ``events_consumer_lag`` (labels topic,
    consumer_group) in ``metrics_registry`` (the default registry when ``None``).

    Returns the collector (``registry.unregister(collector)`` removes it).
    """
    try:
        import prometheus_client as prom
    except ImportError as exc:
        raise ConfigurationError(
            'Prometheus metrics need prometheus_client: pip install "dotmac-events[prometheus]"'
        ) from exc
    registry = metrics_registry if metrics_registry is not None else prom.REGISTRY
    name = f"{namespace}_{LAG_METRIC}" if namespace else LAG_METRIC
    collector = _LagCollector(sampler, name)
    registry.register(collector)
    return collector
