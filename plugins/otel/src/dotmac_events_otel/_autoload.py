"""The process-wide observer behind the ``otel`` entry point.

The plugin host loads ``plugin`` from here when the distribution is installed.
With ``DOTMAC_EVENTS_OTEL=off`` it is an object with no hooks at all, so buses
resolve no observer and pay nothing per event.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from dotmac.events.errors import ConfigurationError
from dotmac.events.plugins import get_plugin_manager

from .observer import OtelObserver

__all__ = ["ENV_VAR", "PLUGIN_NAME", "DisabledPlugin", "configure", "plugin"]

log = logging.getLogger(__name__)

ENV_VAR = "DOTMAC_EVENTS_OTEL"
PLUGIN_NAME = "otel"
_ON = frozenset({"", "1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


class DisabledPlugin:
    """Stands in for the observer when it is turned off: it implements no hook."""

    def __repr__(self) -> str:
        return "<dotmac_events_otel disabled>"


def enabled_in_environment() -> bool:
    """``$DOTMAC_EVENTS_OTEL``: on (the default) or off; anything else is an error."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigurationError(f"{ENV_VAR} must be on or off (1/0, true/false, yes/no), got {value!r}")


def _from_environment() -> OtelObserver | DisabledPlugin:
    if not enabled_in_environment():
        log.debug("OpenTelemetry observer turned off by %s", ENV_VAR)
        return DisabledPlugin()
    return OtelObserver()


def configure(*, enabled: bool = True, **options: Any) -> OtelObserver | None:
    """Replace the process-wide observer; buses started afterwards use the new one.

    ``options`` are those of :class:`OtelObserver` (``tenant_metrics=True``,
    ``max_tenants=50``, ``metrics=False``, explicit providers, ...). ``enabled=False``
    turns the process-wide observer off. Works whether or not the entry point was
    loaded (``DOTMAC_EVENTS_LOAD_PLUGINS`` may have left it out). Returns the new
    observer, or ``None`` when disabled.
    """
    observer = OtelObserver(**options) if enabled else None
    pm = get_plugin_manager()
    if pm.get_plugin(PLUGIN_NAME) is not None:
        pm.unregister(name=PLUGIN_NAME)
    pm.register(observer if observer is not None else DisabledPlugin(), name=PLUGIN_NAME)
    return observer


plugin = _from_environment()
