"""``dotmac-events run`` on Redis in real subprocesses: drain on SIGTERM, workers, kill -9.

Every test uses a key prefix of its own on a private redis-server (or ``$REDIS_URL``).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dotmac.events import Event, create_bus

pytest.importorskip("dotmac_events_redis")

from dotmac_events_redis.testing import RedisServer, redis_server_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "apps"))

from harness import Service, Services  # noqa: E402


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if not redis_server_available():
        pytest.skip("redis-server is not installed and REDIS_URL is not set")
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def url(redis_url: str) -> str:
    # Entries of a dead consumer are reclaimed after 1 s, checked every 0.2 s.
    sep = "&" if "?" in redis_url else "?"
    return f"{redis_url}{sep}key_prefix=app-{uuid.uuid4().hex[:8]}:&min_idle_time=1&reclaim_interval=0.2"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Services]:
    services = Services(tmp_path, shared_record=True)
    yield services
    services.cleanup()


async def _publish(url: str, topic: str, count: int) -> None:
    async with create_bus(url) as bus:
        await bus.publish_many([Event(topic=topic, payload={"n": n}, key=str(n)) for n in range(count)])


def _done(svc: Service) -> dict[str, set[int]]:
    done: dict[str, set[int]] = {}
    for step, n, pid in svc.records():
        if step == "done":
            done.setdefault(n, set()).add(pid)
    return done


def test_sigterm_during_in_flight_work_loses_nothing(
    service: Callable[..., Service], url: str, report: Callable[..., None]
) -> None:
    total = 24
    env = {"SVC_SECONDS": 0.25, "SVC_CONCURRENCY": 4}
    first = service("worker:app", "--url", url, "--grace", "10", **env)
    first.wait_log("running 1 app")
    asyncio.run(_publish(url, "work", total))
    first.wait_until(lambda: sum(r[0] == "start" for r in first.records()) >= 6, 60, "work in flight")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    rows = first.records()
    started = {n for step, n, _ in rows if step == "start"}
    finished = {n for step, n, _ in rows if step == "done"}
    assert started == finished  # in-flight work drained, nothing cut off
    line = first.wait_log(
        r"svc: drained (\d+) of (\d+) in-flight handler\(s\) in [\d.]+s \(0 cancelled at the grace limit\), "
        r"(\d+) event\(s\) released for redelivery; in all (\d+) handled"
    )
    in_flight, released, handled = int(line.group(2)), int(line.group(3)), int(line.group(4))
    assert int(line.group(1)) == in_flight >= 1  # what ran at SIGTERM finished
    assert handled == len(finished)
    assert handled < total

    # A second worker of the same group picks up what the first left.
    second = service("worker:app", "--url", url, **env)
    second.wait_until(lambda: len(_done(second)) >= total, 60, f"all {total} events handled")
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    lost = total - len(_done(second))
    duplicates = sum(len(pids) - 1 for pids in _done(second).values())
    report(
        published=total,
        in_flight_at_sigterm=in_flight,
        handled_by_first=handled,
        released=released,
        second_worker=total - handled,
        lost=lost,
        duplicates=duplicates,
    )
    assert lost == 0


def test_two_workers_one_killed_its_events_go_to_the_other(
    service: Callable[..., Service], url: str, report: Callable[..., None]
) -> None:
    total = 24
    sup = service(
        "worker:app", "--url", url, "--workers", "2", "--grace", "10", SVC_SECONDS=0.25, SVC_CONCURRENCY=2
    )
    sup.wait_until(lambda: sum(r[0] == "up" for r in sup.records()) >= 2, 60, "two workers up")
    sup.wait_until(lambda: len(re.findall("running 1 app", sup.log())) >= 2, 60, "two workers subscribed")
    asyncio.run(_publish(url, "work", total))

    def in_flight_by_two() -> bool:
        pids = {pid for step, _, pid in sup.records() if step == "start"}
        return len(pids) >= 2

    sup.wait_until(in_flight_by_two, 60, "both workers handling")
    rows = sup.records()
    victim = (
        rows[-1][2]
        if rows[-1][0] == "start"
        else next(pid for step, _, pid in reversed(rows) if step == "start")
    )
    os.kill(victim, signal.SIGKILL)
    cut_off = {n for step, n, pid in sup.records() if step == "start" and pid == victim} - {
        n for step, n, pid in sup.records() if step == "done" and pid == victim
    }
    sup.wait_log(rf"worker \d \(pid {victim}\) died with signal SIGKILL; restarting")
    sup.wait_until(lambda: len(_done(sup)) >= total, 60, f"all {total} events handled")
    done = _done(sup)
    assert cut_off, "the killed worker had events in flight"
    for n in cut_off:
        assert done[n] - {victim}, f"event {n} of the killed worker was redelivered to a live one"
    sup.signal(signal.SIGTERM)
    assert sup.wait(40) == 0
    assert "all workers stopped (1 restart(s)); exit code 0" in sup.log()
    report(
        published=total,
        killed_in_flight=len(cut_off),
        lost=total - len(done),
        duplicates=sum(len(p) - 1 for p in done.values()),
        workers=len({pid for _, _, pid in sup.records()}),
    )
