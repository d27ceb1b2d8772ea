"""Observer plumbing: resolving the observer hooks once per bus, and isolating them.

An observer is a plugin; whatever it raises is caught here, logged once per hook,
counted, and reported through ``dotmac_events_on_error(where="observer")``. It never
reaches the publish path or the runner, so it cannot change what happens to an event.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import ConsumeInfo, PublishInfo

__all__ = ["ConsumeInfo", "Observers", "PublishInfo", "server_of"]

log = logging.getLogger(__name__)

_OBSERVER_HOOKS = (
    "dotmac_events_publish_context",
    "dotmac_events_consume_context",
    "dotmac_events_on_publish",
    "dotmac_events_on_consume",
    "dotmac_events_on_retry",
    "dotmac_events_on_dead_letter",
    "dotmac_events_on_error",
)


class _Guarded:
    """Calls one hook (a pluggy caller, or its only implementation directly) and
    never raises: a failure goes to ``failed(hook, exc)`` and the call returns ``[]``.

    pluggy's dispatch costs more per call than a typical observer does; with a single
    plain implementation the outcome is the same when it is called directly: it gets
    the arguments it names, and its result comes back in a list, ``None`` left out.
    """

    __slots__ = ("_caller", "_failed", "_function", "_names", "name")

    def __init__(self, name: str, caller: Any, failed: Callable[[str, BaseException], None]) -> None:
        self.name = name
        self._caller = caller
        self._failed = failed
        impls = caller.get_hookimpls()
        if len(impls) == 1 and not impls[0].hookwrapper and not impls[0].wrapper:
            self._function: Callable[..., Any] | None = impls[0].function
            self._names = tuple(impls[0].argnames)
        else:
            self._function = None
            self._names = ()

    def __call__(self, **kwargs: Any) -> list[Any]:
        try:
            if self._function is not None:
                result = self._function(*[kwargs[name] for name in self._names])
                return [] if result is None else [result]
            results: list[Any] = self._caller(**kwargs)
            return results
        except Exception as exc:
            self._failed(self.name, exc)
            return []


class Observers:
    """The observer hooks of one bus, each ``None`` when nothing implements it.

    The bus checks these attributes on its hot path; an absent observer costs one
    attribute test. ``extra`` are the bus's own observers (``create_bus(observers=...)``);
    one with a ``replaces_plugins`` attribute (a tuple of plugin names) hides those
    process-wide plugins from this bus. ``failures`` counts observer errors per hook.
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
        self.failures: dict[str, int] = {}
        self.publish_context = self._resolve(pm, "dotmac_events_publish_context")
        self.consume_context = self._resolve(pm, "dotmac_events_consume_context")
        self.on_publish = self._resolve(pm, "dotmac_events_on_publish")
        self.on_consume = self._resolve(pm, "dotmac_events_on_consume")
        self.on_retry = self._resolve(pm, "dotmac_events_on_retry")
        self.on_dead_letter = self._resolve(pm, "dotmac_events_on_dead_letter")
        self.on_error = self._resolve(pm, "dotmac_events_on_error")

    def _resolve(self, pm: pluggy.PluginManager, name: str) -> _Guarded | None:
        caller = getattr(pm.hook, name)
        if not caller.get_hookimpls():
            return None
        return _Guarded(name.removeprefix("dotmac_events_"), caller, self._failed)

    def _failed(self, hook: str, exc: BaseException) -> None:
        count = self.failures.get(hook, 0) + 1
        self.failures[hook] = count
        if count == 1:
            log.error("observer hook %s raised (logged once per hook, counted after)", hook, exc_info=exc)
        if hook != "on_error" and self.on_error is not None:
            self.on_error(where="observer", error=exc, info={"hook": hook})

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

    def enter_all(
        self, stack: contextlib.ExitStack, managers: Iterable[AbstractContextManager[Any] | None], hook: str
    ) -> list[Any]:
        """Enter on ``stack`` each context manager an observer returned and return what
        their ``__enter__`` gave; one whose ``__enter__`` or ``__exit__`` raises is
        reported like any failing observer and left out."""
        values: list[Any] = []
        for cm in managers:
            if cm is None:
                continue
            try:
                values.append(cm.__enter__())
            except Exception as exc:
                self._failed(hook, exc)
                continue
            stack.push(self._exit_guard(cm, hook))
        return values

    def _exit_guard(self, cm: AbstractContextManager[Any], hook: str) -> Callable[..., bool]:
        def exit_(*exc_info: Any) -> bool:
            try:
                cm.__exit__(*exc_info)
            except Exception as exc:
                self._failed(hook, exc)
            return False  # an observer never swallows the error of what it wraps

        return exit_


def server_of(transport: Any) -> tuple[str | None, int | None]:
    """The (address, port) of the broker ``transport`` talks to, from its ``describe()``.

    ``host``/``port`` where the transport names them (Redis, RabbitMQ), else the first
    of its ``bootstrap_servers`` (Kafka); ``(None, None)`` when it has none or its
    ``describe()`` fails.
    """
    try:
        facts = transport.describe()
    except Exception:
        return None, None
    host = facts.get("host")
    port = facts.get("port")
    if host is None:
        servers = facts.get("bootstrap_servers")
        if isinstance(servers, (list, tuple)):
            servers = servers[0] if servers else None
        if not isinstance(servers, str) or not servers:
            return None, None
        first = servers.split(",", 1)[0].strip()
        host, _, port_text = first.rpartition(":")
        if not host:
            return first or None, None
        host = host.strip("[]")
        port = int(port_text) if port_text.isdigit() else None
    return str(host), port if isinstance(port, int) and not isinstance(port, bool) else None
