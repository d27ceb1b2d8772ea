"""The plugin host: a pluggy manager fed by builtins and ``dotmac_events`` entry points.

Environment:

- ``DOTMAC_EVENTS_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (builtins only).
- ``DOTMAC_EVENTS_LOAD_PLUGINS=a,b``: load only the entry points named ``a`` and ``b``
  (an empty value loads none).

A plugin that fails to import is logged with its name and version and skipped.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .registry import Registry

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "plugin_infos",
    "reset_plugins",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dotmac_events"
DEFAULT_PLUGINS = ("dotmac.events._builtin",)

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT_NAME)

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_failed: dict[str, str] = {}
_versions: dict[str, str] = {}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _selected(eps: Iterable[EntryPoint]) -> list[EntryPoint]:
    if _truthy(os.environ.get("DOTMAC_EVENTS_DISABLE_PLUGIN_AUTOLOAD")):
        return []
    only = os.environ.get("DOTMAC_EVENTS_LOAD_PLUGINS")
    chosen = list(eps)
    if only is not None:
        names = {n.strip() for n in only.split(",") if n.strip()}
        chosen = [ep for ep in chosen if ep.name in names]
    return chosen


def _dist_version(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown version"


def new_plugin_manager(*, autoload: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the hookspecs, the builtins and (optionally) entry points."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if autoload:
        for ep in _selected(entry_points(group=ENTRY_POINT_GROUP)):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            version = _dist_version(ep)
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the host down
                _failed[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "skipping dotmac-events plugin %r (%s): %s: %s",
                    ep.name,
                    version,
                    type(exc).__name__,
                    exc,
                )
                continue
            _versions[ep.name] = version
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, built on first use."""
    global _pm
    with _lock:
        if _pm is None:
            _pm = new_plugin_manager()
        return _pm


def build_registry(pm: pluggy.PluginManager) -> Registry:
    registry = Registry()
    for hook_name in (
        "dotmac_events_register_transports",
        "dotmac_events_register_codecs",
        "dotmac_events_register_retry_policies",
    ):
        caller = getattr(pm.hook, hook_name)
        # Call one implementation at a time so a clash names the plugin responsible.
        for impl in reversed(caller.get_hookimpls()):
            registry._current = impl.plugin_name
            impl.function(register=registry)
    registry._current = "?"
    return registry


def get_registry() -> Registry:
    """The registry of the process-wide manager."""
    global _registry
    pm = get_plugin_manager()
    with _lock:
        if _registry is None:
            _registry = build_registry(pm)
        return _registry


def reset_plugins() -> None:
    """Forget the loaded plugins (tests; after changing the environment variables)."""
    global _pm, _registry
    with _lock:
        _pm = None
        _registry = None
        _failed.clear()
        _versions.clear()


class PluginInfo(dict[str, Any]):
    """A JSON-ready description of one loaded plugin."""


def _owned(registry: Registry, kind: str, plugin: str) -> list[str]:
    return sorted(item for (k, item), owner in registry.owner.items() if k == kind and owner == plugin)


def plugin_infos() -> list[PluginInfo]:
    """Name, version, hooks, transports and codecs of every loaded plugin, then failures."""
    pm = get_plugin_manager()
    registry = get_registry()
    infos: list[PluginInfo] = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or ())
        infos.append(
            PluginInfo(
                name=name,
                version=_versions.get(name, _core_version() + " (builtin)")
                if name in DEFAULT_PLUGINS
                else _versions.get(name, "unknown"),
                hooks=hooks,
                transports=_owned(registry, "transport", name),
                schemes=_owned(registry, "scheme", name),
                codecs=_owned(registry, "codec", name),
                retry_policies=_owned(registry, "retry_policy", name),
            )
        )
    for name, error in sorted(_failed.items()):
        infos.append(PluginInfo(name=name, error=error, loaded=False))
    return infos


def _core_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dotmac-events {version('dotmac-events')}"
    except PackageNotFoundError:
        return "dotmac-events (not installed)"
