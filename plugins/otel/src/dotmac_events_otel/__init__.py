"""dotmac-events-otel: OpenTelemetry tracing and metrics for dotmac-events.

Installed, it observes every bus of the process through the global OpenTelemetry
providers and propagator (set them with the SDK of your choice; without one the
API's no-op implementations run). ``DOTMAC_EVENTS_OTEL=off`` turns it off,
:func:`configure` changes its options, and ``create_bus(...,
observers=[OtelObserver(tracer_provider=..., meter_provider=...)])`` gives one bus
its own providers instead (never both: the explicit observer replaces the
process-wide one on that bus).

This module holds only public names; the hooks are methods of :class:`OtelObserver`.
"""

from __future__ import annotations

from ._autoload import ENV_VAR, DisabledPlugin, configure
from .observer import INSTRUMENTATION_SCOPE, METRIC_NAMES, SEMCONV_METRIC_NAMES, OtelObserver

__all__ = [
    "ENV_VAR",
    "INSTRUMENTATION_SCOPE",
    "METRIC_NAMES",
    "SEMCONV_METRIC_NAMES",
    "DisabledPlugin",
    "OtelObserver",
    "configure",
]
