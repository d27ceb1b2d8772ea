"""Faults with figures: a group member killed with SIGKILL mid-stream, and a restart
of a private RabbitMQ node under a live bus. Both count lost and duplicated events."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.testing.collect import Collector, wait_for
from dotmac_events_rabbitmq.testing import RabbitMQNode, rabbitmq_server_available

pytestmark = pytest.mark.timeout(300)


def _payload_ids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def test_member_killed_with_sigkill_loses_nothing(rabbitmq_url: str, tmp_path: Path) -> None:
    n = 400
    topic, group = f"faults.kill.{uuid.uuid4().hex[:8]}", "billing"
    out = tmp_path / "victim.txt"
    victim = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("consumer_proc.py")),
            rabbitmq_url,
            topic,
            group,
            str(out),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "DOTMAC_EVENTS_LOAD_PLUGINS": "rabbitmq"},
    )
    try:
        assert victim.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(victim.stdout.readline), 30)
        assert line.strip() == b"ready", line
        survivor = Collector()
        async with create_bus(rabbitmq_url) as bus:
            await bus.subscribe(
                topic, survivor, group=group, options=ConsumerOptions(concurrency=4, prefetch_count=20)
            )
            await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(n)])
            await wait_for(lambda: len(_payload_ids(out)) >= 30, 30, what="the victim handling events")
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed_after = len(_payload_ids(out))
            everything = set(range(n))
            await wait_for(
                lambda: set(_payload_ids(out)) | set(survivor.payloads("i")) >= everything,
                60,
                what="every event handled by a live member",
            )
            await asyncio.sleep(0.2)  # let a stray duplicate show up in the count
        handled = Counter(_payload_ids(out)) + Counter(survivor.payloads("i"))
        lost = len(everything - set(handled))
        duplicates = sum(c - 1 for c in handled.values())
        print(
            f"\nSIGKILL of a member: events={n} victim_handled={killed_after} "
            f"survivor_handled={len(survivor.events)} lost={lost} duplicates={duplicates}"
        )
        assert lost == 0
        assert killed_after < n, "the victim handled everything before the kill: nothing was tested"
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        if victim.stdout is not None:
            victim.stdout.close()


# RabbitMQ 3.10 sometimes leaves the quorum queue of a single node that was killed
# unavailable for over a minute when clients reconnect while it recovers (basic.consume
# times out inside the broker, which closes the connection with INTERNAL_ERROR); the
# bus keeps retrying and recovers with the queue. Too slow and broker-dependent for
# every run, so the crash variant is opt-in.
CRASH_TEST = os.environ.get("DOTMAC_EVENTS_RABBITMQ_CRASH_TEST") == "1"


@pytest.mark.skipif(not rabbitmq_server_available(), reason="rabbitmq-server is not installed")
@pytest.mark.parametrize(
    "how",
    [
        "stop",
        pytest.param(
            "kill",
            marks=pytest.mark.skipif(not CRASH_TEST, reason="set DOTMAC_EVENTS_RABBITMQ_CRASH_TEST=1"),
        ),
    ],
)
async def test_broker_restart_loses_no_confirmed_event(how: str) -> None:
    """Publish through a restart of the node (clean stop, or SIGKILL of the VM): every
    event whose publish returned is handled once the bus has reconnected."""
    with RabbitMQNode() as node:
        topic = f"faults.restart.{uuid.uuid4().hex[:8]}"
        url = f"{node.url}?publish_timeout=120&reconnect_interval=0.5"
        seen = Collector()
        confirmed: list[int] = []
        async with create_bus(url) as consumer, create_bus(url) as producer:
            await consumer.subscribe(topic, seen, group="g", options=ConsumerOptions(concurrency=4))
            stop = asyncio.Event()

            async def publish_loop() -> None:
                i = 0
                while not stop.is_set():
                    await producer.publish(Event(topic=topic, payload={"i": i}))
                    confirmed.append(i)
                    i += 1

            publisher = asyncio.create_task(publish_loop())
            await wait_for(lambda: len(confirmed) >= 200, 30, what="200 confirmed events")
            before = len(confirmed)
            started = time.monotonic()
            await asyncio.to_thread(node.kill if how == "kill" else node.stop)
            await asyncio.to_thread(node.start)
            down = time.monotonic() - started
            await wait_for(
                lambda: publisher.done() or len(confirmed) >= before + 200, 120, what="publishing to resume"
            )
            stop.set()
            await publisher  # raises what made publishing fail
            await wait_for(
                lambda: set(seen.payloads("i")) >= set(confirmed), 120, what="every confirmed event handled"
            )
        counts = Counter(seen.payloads("i"))
        lost = len(set(confirmed) - set(counts))
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"\nbroker {how} + start: confirmed={len(confirmed)} (before restart {before}) "
            f"handled={len(counts)} lost={lost} duplicates={duplicates} broker_down={down:.1f}s"
        )
        assert lost == 0
