"""Delivery.ack_nowait: how the runner starts an ack without holding its lane."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from dotmac.events import Delivery, Message


class _Delivery(Delivery):
    __slots__ = ("acked", "delivery_count", "gate", "message", "ordering_key")

    def __init__(self, gate: asyncio.Future[None] | None = None) -> None:
        self.message = Message(topic="t", value=b"{}")
        self.delivery_count = 1
        self.ordering_key = None
        self.gate = gate
        self.acked = False

    async def ack(self) -> None:
        if self.gate is not None:
            await self.gate
        self.acked = True

    async def release(self) -> None:
        pass


async def test_the_default_runs_the_ack_in_a_task() -> None:
    delivery = _Delivery()
    future = delivery.ack_nowait()
    assert future is not None
    await asyncio.wait_for(future, 1)
    assert delivery.acked


async def test_an_ack_that_waits_settles_its_future_when_it_is_done() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    delivery = _Delivery(gate)
    future = delivery.ack_nowait()
    assert future is not None
    await asyncio.sleep(0)
    assert not delivery.acked and not future.done()
    gate.set_result(None)
    await asyncio.wait_for(future, 1)
    assert delivery.acked


class _Timed(_Delivery):
    """An ack that relies on its own task: the default imposes no rule against it."""

    __slots__ = ()

    async def ack(self) -> None:
        assert asyncio.current_task() is not None
        async with asyncio.timeout(1):
            await super().ack()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
async def test_an_ack_may_use_its_task_and_a_timeout() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    delivery = _Timed(gate)
    future = delivery.ack_nowait()
    assert future is not None
    asyncio.get_running_loop().call_soon(gate.set_result, None)
    await asyncio.wait_for(future, 2)
    assert delivery.acked


async def test_the_memory_ack_is_done_at_once(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from dotmac.events import Event, create_bus
    from dotmac.events.testing import wait_for
    from dotmac_events_memory.transport import _MemoryDelivery

    results: list[tuple[object, bool]] = []
    original = _MemoryDelivery.ack_nowait

    def recording(self: _MemoryDelivery) -> None:
        results.append((original(self), self._done))

    monkeypatch.setattr(_MemoryDelivery, "ack_nowait", recording)
    async with create_bus(memory_url) as bus:
        sub = await bus.subscribe("t", lambda _e: None, group="g")
        await bus.publish(Event(topic="t"))
        await wait_for(lambda: sub.handled == 1, 5, what="one event acked")
    assert results == [(None, True)]


async def test_an_ack_that_fails_fails_its_future() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future = _Delivery(gate).ack_nowait()
    assert future is not None
    gate.set_exception(ConnectionError("broker gone"))
    with pytest.raises(ConnectionError, match="broker gone"):
        await asyncio.wait_for(future, 1)


async def test_the_runner_survives_an_ack_that_fails_later(
    memory_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dotmac.events import Event, create_bus
    from dotmac.events.options import ConsumerOptions
    from dotmac.events.testing import wait_for
    from dotmac_events_memory.transport import _MemoryDelivery

    failed: list[str] = []
    original = _MemoryDelivery.ack_nowait

    def flaky(self: _MemoryDelivery) -> asyncio.Future[None] | None:
        if self.message.key == "bad" and not failed:
            failed.append(self.message.key)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.set_exception, ConnectionError("ack lost"))
            return future
        return original(self)

    monkeypatch.setattr(_MemoryDelivery, "ack_nowait", flaky)
    caplog.set_level(logging.WARNING, logger="dotmac.events.runner")
    seen: list[str | None] = []
    async with create_bus(memory_url) as bus:
        sub = await bus.subscribe(
            "t", lambda e: seen.append(e.key), group="g", options=ConsumerOptions(prefetch_count=2)
        )
        for key in ("a", "bad", "b", "c", "d"):
            await bus.publish(Event(topic="t", key=key))
        await wait_for(lambda: sub.handled == 5, 5, what="five events settled")
        assert seen == ["a", "bad", "b", "c", "d"]
        assert sub.errors == 1
        assert sub._window.held == 0
    assert "ack failed on t" in caplog.text


async def test_acks_that_share_one_future_give_back_every_window_slot(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport may answer several acks with one future (one write for a batch):
    the window gets back one slot per acked event once it settles, no more, no less."""
    from dotmac.events import Event, create_bus
    from dotmac.events.options import ConsumerOptions
    from dotmac.events.testing import wait_for
    from dotmac_events_memory.transport import _MemoryDelivery

    shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    original = _MemoryDelivery.ack_nowait

    def batched(self: _MemoryDelivery) -> asyncio.Future[None]:
        original(self)
        return shared

    monkeypatch.setattr(_MemoryDelivery, "ack_nowait", batched)
    seen: list[str | None] = []
    async with create_bus(memory_url) as bus:
        sub = await bus.subscribe(
            "t", lambda e: seen.append(e.key), group="g", options=ConsumerOptions(prefetch_count=2)
        )
        for key in ("a", "b", "c", "d", "e"):
            await bus.publish(Event(topic="t", key=key))
        await wait_for(lambda: len(seen) == 2, 5, what="a full window handled")
        # Both slots wait on the one ack; the runner registered one callback per ack.
        assert sub._window.held == 2 and sub.handled == 0
        assert len(shared._callbacks) == 2  # type: ignore[attr-defined]
        shared.set_result(None)
        await wait_for(lambda: sub.handled == 5, 5, what="five events settled")
        assert seen == ["a", "b", "c", "d", "e"]
        assert sub._window.held == 0
