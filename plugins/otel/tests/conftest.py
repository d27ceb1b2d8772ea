"""Real OpenTelemetry SDK objects: an in-memory span exporter and metric reader."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dotmac.events import EventBus, create_bus, hookimpl
from dotmac_events_otel import OtelObserver


class Telemetry:
    """SDK providers wired to in-memory sinks, with lookups for assertions."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def observer(self, **options: Any) -> OtelObserver:
        return OtelObserver(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name and (kind is None or s.kind == kind)]

    def one(self, name: str, kind: SpanKind | None = None) -> ReadableSpan:
        found = self.named(name, kind)
        assert len(found) == 1, f"expected one {name!r} span, got {[s.name for s in self.spans()]}"
        return found[0]

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of ``metric``."""
        data = self.reader.get_metrics_data()
        out: list[tuple[dict[str, Any], Any]] = []
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for m in scope_metrics.metrics:
                    if m.name == metric:
                        out.extend((dict(p.attributes or {}), p) for p in m.data.data_points)
        return out

    def value(self, metric: str, **attributes: Any) -> float:
        """Sum (counters) or count (histograms) of the points matching ``attributes``."""
        total = 0.0
        for attrs, point in self.points(metric):
            if all(attrs.get(k) == v for k, v in attributes.items()):
                total += point.value if hasattr(point, "value") else point.count
        return total

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class Outcomes:
    """An observer that lets a test await handled deliveries (an event, not a sleep)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.dead: list[str] = []
        self._changed = asyncio.Event()

    @hookimpl
    def dotmac_events_on_consume(self, info: Any, outcome: str, **_: Any) -> None:
        self.seen.append((info.topic, outcome))
        self._changed.set()

    @hookimpl
    def dotmac_events_on_dead_letter(self, info: Any, **_: Any) -> None:
        self.dead.append(info.topic)
        self._changed.set()

    async def _until(self, reached: Any, timeout: float) -> None:
        async def loop() -> None:
            while not reached():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait(self, count: int, topic: str | None = None, timeout: float = 10.0) -> None:
        """Until ``count`` deliveries (of ``topic``) were handled, dead-lettered or released."""
        await self._until(lambda: sum(1 for t, _ in self.seen if topic in (None, t)) >= count, timeout)

    async def wait_dead(self, count: int, topic: str | None = None, timeout: float = 10.0) -> None:
        """Until ``count`` messages (of ``topic``) were written to a dead-letter topic."""
        await self._until(lambda: sum(1 for t in self.dead if topic in (None, t)) >= count, timeout)


@pytest.fixture(scope="session")
def global_telemetry() -> Telemetry:
    """SDK providers installed as the process's global ones (allowed once per process)."""
    t = Telemetry()
    trace.set_tracer_provider(t.tracer_provider)
    metrics.set_meter_provider(t.meter_provider)
    return t


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.shutdown()


@pytest.fixture
def memory_url() -> str:
    """A private in-process broker per test (memory buses of one name share a broker)."""
    return f"memory://otel-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_bus(telemetry: Telemetry, memory_url: str) -> Any:
    def make(url: str | None = None, *, observe: bool = True, **kwargs: Any) -> EventBus:
        observers = [telemetry.observer()] if observe else []
        return create_bus(
            url or memory_url, observers=observers + list(kwargs.pop("observers", [])), **kwargs
        )

    return make


@pytest.fixture
def new_topic() -> Any:
    """Fresh topic names, so no test sees another's events."""
    return lambda: f"t.{uuid.uuid4().hex[:10]}"
