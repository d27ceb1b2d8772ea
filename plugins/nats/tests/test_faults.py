"""Fault tests with figures: a consumer killed with SIGKILL, a broker stopped and restarted.

Each prints its figures (sent, confirmed, handled, lost, duplicates, times) and records
them for the summary at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dotmac.events import ConsumerOptions, Event, EventBusError, create_bus
from dotmac.events.testing import Collector, wait_for
from dotmac_events_nats.subjects import consumer_name
from dotmac_events_nats.testing import NatsServer, nats_server_available

CONSUMER = Path(__file__).with_name("consumer_proc.py")
T = 30.0


@pytest.fixture
def server() -> Iterator[NatsServer]:
    """A private nats-server with a file store, for tests that stop or kill it."""
    if not nats_server_available():
        pytest.skip("nats-server is not installed")
    with NatsServer() as srv:
        yield srv


class ConsumerProcess:
    """``consumer_proc.py`` in a subprocess, killed for sure at the end of the test."""

    def __init__(self, *args: str) -> None:
        self.args = [str(CONSUMER), *args]
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> ConsumerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), T)
        assert line.strip() == b"ready", f"consumer process did not start: {line!r}"
        return self

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> None:
        assert self.proc is not None
        await self.proc.wait()

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.kill()
            await self.proc.wait()


def handled_ids(record: Path) -> list[str]:
    if not record.exists():
        return []
    return [line.split(" ", 1)[1] for line in record.read_text().splitlines() if line.startswith("ok ")]


async def test_kill_9_consumer_mid_stream_loses_nothing(
    server: NatsServer, tmp_path: Path, report: Any
) -> None:
    """A member dies with SIGKILL while handling a stream of events; its un-acked events
    go to the member that joins the group after ack_wait, and every event is handled."""
    n = 600
    ack_wait = 2.0
    name = f"kill.{uuid.uuid4().hex[:8]}"
    url = f"{server.url}?stream=KILL&ack_wait={ack_wait}&pull_expires=0.5"
    record = tmp_path / "victim.log"
    survivor_seen = Collector()
    async with create_bus(url) as producer, create_bus(url) as survivor:
        async with ConsumerProcess(
            "--url", url, "--topic", name, "--group", "g", "--record", str(record), "--delay", "0.01"
        ) as victim:
            sent = [Event(topic=name, payload={"i": i}) for i in range(n)]
            for start in range(0, n, 100):
                await producer.publish_many(sent[start : start + 100])
            # The victim alone: it holds a full window of un-acked events when it dies.
            await wait_for(lambda: len(handled_ids(record)) >= 100, T, what="the victim to handle 100 events")
            killed_at = time.monotonic()
            victim.kill()
            await victim.wait()
            by_victim = len(handled_ids(record))
            info = await producer.transport.jetstream.consumer_info("KILL", consumer_name("g", name))
            unacked_at_kill = info.num_ack_pending
            await survivor.subscribe(name, survivor_seen, group="g")
        expected = {e.event_id for e in sent}
        await wait_for(
            lambda: expected <= set(survivor_seen.ids) | set(handled_ids(record)),
            T,
            what="every event to be handled by one member or the other",
        )
        recovered_in = time.monotonic() - killed_at
    victim_ids = handled_ids(record)
    all_calls = victim_ids + survivor_seen.ids
    lost = len(expected - set(all_calls))
    duplicates = len(all_calls) - len(set(all_calls))
    report(
        sent=n,
        handled_by_victim_before_kill=by_victim,
        unacked_at_kill=unacked_at_kill,
        handled_by_survivor=len(survivor_seen.ids),
        lost=lost,
        duplicates=duplicates,
        ack_wait_s=ack_wait,
        all_handled_after_kill_s=round(recovered_in, 2),
    )
    assert lost == 0
    assert unacked_at_kill > 0, "the victim must die holding un-acked events"
    # Only events the victim handled but could not ack may come twice.
    assert duplicates <= 5 + 20


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
async def test_broker_restart_while_publishing_and_consuming(
    server: NatsServer, report: Any, crash: bool
) -> None:
    """The server stops (or crashes) and comes back on the same store while events flow:
    every event whose publish returned without error is handled; consumers resume alone."""
    name = f"restart.{uuid.uuid4().hex[:8]}"
    url = f"{server.url}?stream=RESTART&request_timeout=1&reconnect_wait=0.1&pull_expires=0.5&ack_wait=5"
    seen = Collector()
    confirmed: list[str] = []
    failed = 0
    stop = asyncio.Event()

    async def publisher(bus: Any) -> None:
        nonlocal failed
        i = 0
        while not stop.is_set():
            event = Event(topic=name, payload={"i": i})
            i += 1
            try:
                await bus.publish(event)
            except EventBusError:
                failed += 1
                await asyncio.sleep(0.05)
                continue
            confirmed.append(event.event_id)
            await asyncio.sleep(0.002)

    async with create_bus(url) as producer, create_bus(url) as consumer:
        await consumer.subscribe(name, seen, group="g", options=ConsumerOptions(concurrency=4))
        task = asyncio.create_task(publisher(producer))
        await wait_for(lambda: len(confirmed) >= 300, T, what="300 confirmed events")
        before = len(confirmed)
        down_at = time.monotonic()
        await asyncio.to_thread(server.kill if crash else server.stop)
        await asyncio.sleep(1.0)  # publishes fail meanwhile
        await asyncio.to_thread(server.start)
        downtime = time.monotonic() - down_at
        await wait_for(lambda: len(confirmed) >= before + 300, T, what="300 more confirmed events")
        stop.set()
        await task
        expected = set(confirmed)
        await wait_for(lambda: expected <= set(seen.ids), T * 2, what="every confirmed event to be handled")
    lost = len(expected - set(seen.ids))
    report(
        crash=crash,
        confirmed=len(confirmed),
        publish_errors=failed,
        handled=len(set(seen.ids)),
        lost=lost,
        duplicates=len(seen.ids) - len(set(seen.ids)),
        downtime_s=round(downtime, 2),
    )
    assert lost == 0


async def test_poison_event_that_crashes_the_process_is_dead_lettered(
    server: NatsServer, tmp_path: Path, report: Any
) -> None:
    """An event that kills every process that handles it: the server's delivery count
    reaches max_deliver and the next process dead-letters it without calling the handler."""
    name = f"poison.{uuid.uuid4().hex[:8]}"
    url = f"{server.url}?stream=POISON&ack_wait=1&pull_expires=0.5&max_deliver=3"
    record = tmp_path / "poison.log"
    dead = Collector()
    crashes = 0
    async with create_bus(url) as producer:
        await producer.subscribe(f"{name}.dlq", dead)
        poison = Event(topic=name, payload={"poison": True})
        healthy = [Event(topic=name, payload={"i": i}) for i in range(10)]
        await producer.publish_many([poison, *healthy])
        started = time.monotonic()
        expected = {e.event_id for e in healthy}
        for _ in range(6):
            # One event at a time: a crash then counts a delivery of the poison only.
            args = ["--url", url, "--topic", name, "--group", "g", "--record", str(record)]
            async with ConsumerProcess(*args, "--start-from", "earliest", "--prefetch", "1") as consumer:
                assert consumer.proc is not None
                exited = asyncio.ensure_future(consumer.proc.wait())
                waiting = asyncio.ensure_future(dead.wait_count(1, T))
                await asyncio.wait([waiting, exited], return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if not exited.done():
                    assert dead.events, "neither a crash nor a dead letter"
                    # The poison is dead-lettered: this process lives on and handles the rest.
                    await wait_for(lambda: expected <= set(handled_ids(record)), T, what="the healthy events")
                    exited.cancel()
                    break
                assert consumer.proc.returncode == 17, f"consumer exited with {consumer.proc.returncode}"
                crashes += 1
        took = time.monotonic() - started
        attempts = record.read_text().splitlines().count(f"attempt {poison.event_id}")
    letter = dead.events[0]
    report(
        handler_attempts=attempts,
        crashes=crashes,
        dead_letters=len(dead.events),
        reason=letter.headers["x-dlq-reason"],
        healthy_handled=len(expected & set(handled_ids(record))),
        took_s=round(took, 1),
    )
    assert letter.event_id == poison.event_id
    assert letter.headers["x-dlq-reason"] == "max_deliveries"
    assert attempts == 3 and crashes == 3
    assert len(dead.events) == 1, "only the poison event may be dead-lettered"
