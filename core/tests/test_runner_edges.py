"""Runner rules that the conformance kit cannot express on every transport."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from dotmac.events import ConfigurationError, ConsumerOptions, Event, create_bus
from dotmac.events.runner import is_async_callable
from dotmac.events.testing import Collector, wait_for

pytest.importorskip("dotmac_events_memory")


_INTERRUPTED = """
import asyncio, json, sys
from dotmac.events import ConsumerOptions, Event, create_bus

subs = []

def interrupt(event):
    raise KeyboardInterrupt

async def main():
    async with create_bus(sys.argv[1]) as bus:
        options = ConsumerOptions(sync_handlers="inline", prefetch_count=5)
        subs.append(await bus.subscribe("t", interrupt, group="g", options=options))
        await bus.publish_many([Event(topic="t", payload={"i": i}) for i in range(3)])
        await asyncio.Event().wait()  # until the handler interrupts the program

try:
    asyncio.run(main())
except KeyboardInterrupt:
    sub = subs[0]
    print(json.dumps({"released": sub.released, "handled": sub.handled, "active": sub.active}))
"""


def test_keyboard_interrupt_in_a_handler_propagates_and_close_releases_what_is_held(memory_url: str) -> None:
    # In a process of its own: an interrupt unwinding the interpreter is not for the test runner's.
    command = [sys.executable, "-c", _INTERRUPTED, memory_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    # The interrupted event was released before the interrupt left the runner (the
    # memory broker hands it back at once); closing the bus — asyncio.run cancelled
    # main, which left ``async with`` — released everything still held.
    assert counts["released"] >= 3
    assert counts["handled"] == 0
    assert counts["active"] is False


def test_inline_sync_handlers_refuse_a_timeout() -> None:
    with pytest.raises(ConfigurationError, match="handler_timeout cannot apply to sync_handlers='inline'"):
        ConsumerOptions(sync_handlers="inline", handler_timeout=1.0)
    with pytest.raises(ConfigurationError, match="sync_handlers must be"):
        ConsumerOptions(sync_handlers="loop")  # type: ignore[arg-type]


async def test_a_sync_handler_that_overruns_its_timeout_is_a_failure(memory_url: str) -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow(event: Event) -> None:
        calls.append(threading.current_thread().name)
        release.wait(10)

    async with create_bus(memory_url) as bus:
        options = ConsumerOptions(max_retries=0, handler_timeout=0.05)
        sub = await bus.subscribe("slow", slow, group="g", options=options)
        await bus.publish(Event(topic="slow"))
        await wait_for(lambda: sub.dead_lettered == 1, 5, what="the timed-out sync handler's dead letter")
        release.set()
        (letter,) = await bus.dlq.list("slow.dlq")
        assert letter.error_type == "HandlerTimeoutError"
        assert calls and calls[0].startswith("dotmac-events-")  # it ran in the subscription's thread


async def test_sync_handlers_see_the_callers_context_variables(memory_url: str) -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("from the loop")
    seen: list[str] = []
    async with create_bus(memory_url) as bus:
        await bus.subscribe("ctx", lambda e: seen.append(var.get()), group="g")
        await bus.publish(Event(topic="ctx"))
        await wait_for(lambda: bool(seen), 5, what="the handler")
    assert seen == ["from the loop"]


async def test_keyless_events_go_to_a_free_lane_not_behind_a_busy_one(memory_url: str) -> None:
    gate = asyncio.Event()
    started: list[int] = []
    handled: list[int] = []

    async def handler(event: Event) -> None:
        started.append(event.payload["i"])
        if event.payload["i"] == 0:
            await gate.wait()
        handled.append(event.payload["i"])

    async with create_bus(memory_url) as bus:
        sub = await bus.subscribe("lanes", handler, group="g", options=ConsumerOptions(concurrency=3))
        await bus.publish(Event(topic="lanes", payload={"i": 0}))
        await wait_for(lambda: started == [0], 5, what="the first handler")
        for i in range(1, 21):
            await bus.publish(Event(topic="lanes", payload={"i": i}))
        # The lane holding event 0 takes none of them: the two free lanes handle all.
        await wait_for(lambda: len(handled) == 20, 5, what="the keyless events on the free lanes")
        assert sorted(handled) == list(range(1, 21))
        gate.set()
        await wait_for(lambda: sub.handled == 21, 5, what="the first event")


async def test_keyed_events_keep_their_order_beside_keyless_ones(memory_url: str) -> None:
    seen: dict[str, list[int]] = {}

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)  # let the other lanes run between events
        seen.setdefault(event.key or "", []).append(event.payload["i"])

    async with create_bus(memory_url) as bus:
        sub = await bus.subscribe("mixed", handler, group="g", options=ConsumerOptions(concurrency=4))
        events = [
            Event(topic="mixed", payload={"i": i}, key=None if i % 3 == 0 else f"k{i % 3}") for i in range(60)
        ]
        await bus.publish_many(events)
        await wait_for(lambda: sub.handled == 60, 10, what="every event")
    assert seen["k1"] == [i for i in range(60) if i % 3 == 1]
    assert seen["k2"] == [i for i in range(60) if i % 3 == 2]
    assert sorted(seen[""]) == list(range(0, 60, 3))


def test_async_callables_are_recognised() -> None:
    import functools

    async def coro(event: Event) -> None: ...

    def plain(event: Event) -> None: ...

    class AsyncCall:
        async def __call__(self, event: Event) -> Any: ...

    assert is_async_callable(coro)
    assert is_async_callable(functools.partial(coro))
    assert is_async_callable(AsyncCall())
    assert is_async_callable(Collector())
    assert not is_async_callable(plain)
    assert not is_async_callable(functools.partial(plain))
