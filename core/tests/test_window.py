"""The runner's delivery window: bounded, and reopened at half so a backlog moves in bursts."""

from __future__ import annotations

import asyncio

from dotmac.events.runner import _Window


async def _steps(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_full_window_reopens_when_half_of_it_is_free() -> None:
    window = _Window(4)
    for _ in range(4):
        await window.take()
    assert window.full
    taker = asyncio.create_task(window.take())
    await _steps()
    window.give()  # 3 held: still closed
    await _steps()
    assert not taker.done()
    window.give()  # 2 held: half free, open again
    await asyncio.wait_for(taker, 1)
    assert window.held == 3
    assert not window.full
    await window.take()
    assert window.full


async def test_a_window_of_one() -> None:
    window = _Window(1)
    await window.take()
    taker = asyncio.create_task(window.take())
    await _steps()
    assert not taker.done()
    window.give()
    await asyncio.wait_for(taker, 1)
    assert window.held == 1
