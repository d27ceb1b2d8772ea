"""Runner rules that the conformance kit cannot express on every transport."""

from __future__ import annotations

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
