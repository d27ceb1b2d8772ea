"""Resolving observer hooks: one plain implementation is called directly, like pluggy would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pluggy
import pytest

from dotmac.events import Event, hookimpl, hookspecs
from dotmac.events.observe import Observers, PublishInfo, _Guarded


def _direct(hook: object) -> bool:
    # Called without pluggy's dispatch: one plain implementation.
    return isinstance(hook, _Guarded) and hook._function is not None


INFO = PublishInfo(transport="memory", topic="t")


def _manager(*plugins: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    return pm


class _Outcomes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def dotmac_events_on_publish(self, outcome: str, event: Event) -> None:
        # Names a subset of the hook's arguments, in its own order.
        self.seen.append((event.topic, outcome))

    @hookimpl
    def dotmac_events_publish_context(self, info: PublishInfo) -> Any:
        return None if info.topic == "quiet" else f"cm-{info.topic}"


def test_a_single_implementation_gets_the_arguments_it_names() -> None:
    plugin = _Outcomes()
    observers = Observers(_manager(plugin))
    assert _direct(observers.on_publish)
    event = Event(topic="t")
    observers.on_publish(event=event, info=INFO, duration=0.1, outcome="success", error=None)
    assert plugin.seen == [("t", "success")]
    # Results come back as pluggy gives them: a list, None left out.
    assert observers.publish_context(event=event, info=INFO) == ["cm-t"]
    quiet = PublishInfo(transport="memory", topic="quiet")
    assert observers.publish_context(event=event, info=quiet) == []
    assert observers.on_consume is None


class _Wrapper:
    def __init__(self) -> None:
        self.wrapped = 0

    @hookimpl(wrapper=True)
    def dotmac_events_on_publish(self) -> Iterator[None]:
        self.wrapped += 1
        return (yield)


def test_wrappers_and_several_implementations_keep_pluggy_dispatch() -> None:
    wrapper, first, second = _Wrapper(), _Outcomes(), _Outcomes()
    observers = Observers(_manager(wrapper, first))
    assert not _direct(observers.on_publish)
    observers.on_publish(event=Event(topic="t"), info=INFO, duration=0.1, outcome="error", error=None)
    assert wrapper.wrapped == 1
    assert first.seen == [("t", "error")]
    assert not _direct(Observers(_manager(_Wrapper())).on_publish)
    both = Observers(_manager(first, second))
    assert not _direct(both.publish_context)
    assert both.publish_context(event=Event(topic="t"), info=INFO) == ["cm-t", "cm-t"]


class _Described:
    def __init__(self, facts: dict[str, object] | Exception) -> None:
        self.facts = facts

    def describe(self) -> dict[str, object]:
        if isinstance(self.facts, Exception):
            raise self.facts
        return self.facts


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"host": "redis.local", "port": 6380}, ("redis.local", 6380)),
        ({"bootstrap_servers": "k1:9093,k2:9094"}, ("k1", 9093)),
        ({"bootstrap_servers": ["[::1]:9092"]}, ("::1", 9092)),
        ({"bootstrap_servers": "broker"}, ("broker", None)),
        ({"transport": "memory", "name": "x"}, (None, None)),
        (RuntimeError("no"), (None, None)),
    ],
)
def test_server_of_reads_the_transport_description(facts: Any, expected: tuple[Any, Any]) -> None:
    from dotmac.events.observe import server_of

    assert server_of(_Described(facts)) == expected
