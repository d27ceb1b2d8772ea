"""Prometheus metrics through the observer hooks, without a hard dependency.

``create_dotmac_observability_hooks(metrics_registry=CollectorRegistry())`` returns an
observer for ``create_bus(..., observers=[hooks])``. ``prometheus_client`` is imported
only here, when you ask for it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .plugins import hookimpl

if TYPE_CHECKING:
    from .event import Event
    from .observe import ConsumeInfo, PublishInfo
    from .transport import Message

__all__ = ["OTHER", "LabelCap", "PrometheusObserver", "create_dotmac_observability_hooks"]

OTHER = "__other__"
"""Label value that replaces topics/tenants beyond the configured cap."""

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LabelCap:
    """Admits at most ``limit`` distinct values; later ones map to ``__other__``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return ""
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


class PrometheusObserver:
    """Observer plugin that records the six dotmac-events series in a registry."""

    def __init__(
        self,
        metrics_registry: Any = None,
        *,
        tenant_metrics: bool = False,
        max_topics: int = 200,
        max_tenants: int = 200,
        namespace: str = "",
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ConfigurationError(
                'Prometheus metrics need prometheus_client: pip install "dotmac-events[prometheus]"'
            ) from exc
        registry = metrics_registry if metrics_registry is not None else prom.REGISTRY
        self.tenant_metrics = tenant_metrics
        self._topic = LabelCap(max_topics)
        self._tenant = LabelCap(max_tenants)
        tenant = ("tenant",) if tenant_metrics else ()
        pub_labels = ("topic", "transport", "outcome", *tenant)
        con_labels = ("topic", "transport", "consumer_group", "outcome", *tenant)
        kw: dict[str, Any] = {"registry": registry, "namespace": namespace}
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

    def _tenant_label(self, event: Event | None, message: Message | None = None) -> tuple[str, ...]:
        if not self.tenant_metrics:
            return ()
        tenant = event.tenant_id if event is not None else None
        if tenant is None and message is not None:
            tenant = message.headers.get("ce_tenantid")
        return (self._tenant(tenant),)

    @hookimpl
    def dotmac_events_on_publish(
        self, event: Event, info: PublishInfo, duration: float, outcome: str, error: BaseException | None
    ) -> None:
        labels = (self._topic(info.topic), info.transport, outcome, *self._tenant_label(event))
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
            self._topic(info.topic),
            info.transport,
            info.group or "",
            outcome,
            *self._tenant_label(event),
        )
        self.consumed.labels(*labels).inc()
        self.consume_duration.labels(*labels).observe(duration)

    @hookimpl
    def dotmac_events_on_retry(
        self, event: Event, info: ConsumeInfo, attempt: int, delay: float, error: BaseException
    ) -> None:
        self.retried.labels(
            self._topic(info.topic), info.transport, info.group or "", *self._tenant_label(event)
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
            self._topic(info.topic),
            info.transport,
            info.group or "",
            reason,
            *self._tenant_label(event, message),
        ).inc()


def create_dotmac_observability_hooks(
    metrics_registry: Any = None,
    tenant_metrics: bool = False,
    *,
    max_topics: int = 200,
    max_tenants: int = 200,
    namespace: str = "",
) -> PrometheusObserver:
    """Observer recording ``events_published_total``, ``events_consumed_total``,
    ``event_publish_duration_seconds``, ``event_consume_duration_seconds``,
    ``events_retried_total`` and ``events_dlq_total`` into ``metrics_registry`` (a
    ``prometheus_client.CollectorRegistry``; the default registry when ``None``).

    Pass it to ``create_bus(..., observers=[hooks])``. ``tenant_metrics`` adds a
    ``tenant`` label; ``max_topics``/``max_tenants`` cap label values (beyond the cap
    they are counted as ``__other__``) so a flood of names cannot exhaust memory.
    """
    return PrometheusObserver(
        metrics_registry,
        tenant_metrics=tenant_metrics,
        max_topics=max_topics,
        max_tenants=max_tenants,
        namespace=namespace,
    )
