"""Observer plumbing: what observers are told, and resolving them once per bus."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pluggy
from attrs import frozen

from . import hookspecs

__all__ = ["ConsumeInfo", "Observers", "PublishInfo"]


@frozen
class PublishInfo:
    """Context of a publish, passed to observer hooks."""

    transport: str
    topic: str
    batch_size: int = 1


@frozen
class ConsumeInfo:
    """Context of a delivery, passed to observer hooks."""

    transport: str
    topic: str
    group: str | None
    consumer: str
    delivery_count: int = 1
    position: str | None = None


_OBSERVER_HOOKS = (
    "dotmac_events_publish_context",
    "dotmac_events_consume_context",
    "dotmac_events_on_publish",
    "dotmac_events_on_consume",
    "dotmac_events_on_retry",
    "dotmac_events_on_dead_letter",
    "dotmac_events_on_error",
)


class _OnlyImplementation:
    """A hook with one plain implementation, called directly.

    pluggy's dispatch costs more per call than a typical observer does; with a single
    implementation (no wrappers) the outcome is the same: the implementation gets the
    arguments it names, and its result comes back in a list, ``None`` left out.
    """

    __slots__ = ("_function", "_names")

    def __init__(self, impl: pluggy.HookImpl) -> None:
        self._function = impl.function
        self._names = tuple(impl.argnames)

    def __call__(self, **kwargs: Any) -> list[Any]:
        result = self._function(*[kwargs[name] for name in self._names])
        return [] if result is None else [result]


class Observers:
    """The observer hooks of one bus, each ``None`` when nothing implements it.

    The bus checks these attributes on its hot path; an absent observer costs one
    attribute test. ``extra`` are the bus's own observers (``create_bus(observers=...)``);
    one with a ``replaces_plugins`` attribute (a tuple of plugin names) hides those
    process-wide plugins from this bus.
    """

    def __init__(self, pm: pluggy.PluginManager, extra: Iterable[object] = ()) -> None:
        extra = list(extra)
        if extra:
            # Per-bus observers live in a private manager so they never leak to other buses.
            local = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            local.add_hookspecs(hookspecs)
            # An explicit observer may stand in for a process-wide plugin (an OTel observer
            # with its own providers replaces the auto-loaded "otel" one) so nothing is
            # recorded twice.
            replaced = {name for plugin in extra for name in getattr(plugin, "replaces_plugins", ())}
            for name, plugin in pm.list_name_plugin():
                if (
                    plugin is not None
                    and name not in replaced
                    and any(c.name in _OBSERVER_HOOKS for c in pm.get_hookcallers(plugin) or ())
                ):
                    local.register(plugin, name=name)
            for plugin in extra:
                local.register(plugin)
            pm = local
        self.publish_context = self._resolve(pm, "dotmac_events_publish_context")
        self.consume_context = self._resolve(pm, "dotmac_events_consume_context")
        self.on_publish = self._resolve(pm, "dotmac_events_on_publish")
        self.on_consume = self._resolve(pm, "dotmac_events_on_consume")
        self.on_retry = self._resolve(pm, "dotmac_events_on_retry")
        self.on_dead_letter = self._resolve(pm, "dotmac_events_on_dead_letter")
        self.on_error = self._resolve(pm, "dotmac_events_on_error")

    @staticmethod
    def _resolve(pm: pluggy.PluginManager, name: str) -> Any:
        caller = getattr(pm.hook, name)
        impls = caller.get_hookimpls()
        if not impls:
            return None
        if len(impls) == 1 and not impls[0].hookwrapper and not impls[0].wrapper:
            return _OnlyImplementation(impls[0])
        return caller

    @property
    def any(self) -> bool:
        return any(
            h is not None
            for h in (
                self.publish_context,
                self.consume_context,
                self.on_publish,
                self.on_consume,
                self.on_retry,
                self.on_dead_letter,
                self.on_error,
            )
        )

    def error(self, where: str, error: BaseException, info: Mapping[str, Any]) -> None:
        if self.on_error is not None:
            self.on_error(where=where, error=error, info=info)
