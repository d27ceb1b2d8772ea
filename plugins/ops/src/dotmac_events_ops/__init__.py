"""dotmac-events-ops: the operator's view of a running bus.

- :class:`OpsServer` serves ``/healthz`` (event loop not blocked), ``/readyz`` (bus
  started, every subscription live, broker answering) and ``/metrics`` (Prometheus,
  consumer lag included), and a page of topics, consumer groups and dead letters,
  with uvicorn in the bus's event loop; :func:`create_app` gives the Starlette app
  to mount elsewhere.
- CLI: ``dotmac-events groups --url ... [--topic T]`` and ``dotmac-events ui --url ...``
  (every topic of the broker unless topics are named).

This module holds the plugin's hook implementation and its public names; the HTTP
stack is imported on first use.
"""

from __future__ import annotations

import argparse
from typing import Any

from dotmac.events import hookimpl

from . import cli

__all__ = ["LoopLagProbe", "OpsServer", "OpsState", "create_app", "readiness"]

_LAZY = {
    "OpsServer": "app",
    "OpsState": "app",
    "create_app": "app",
    "LoopLagProbe": "health",
    "readiness": "health",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


@hookimpl
def dotmac_events_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    cli.register(subparsers)
