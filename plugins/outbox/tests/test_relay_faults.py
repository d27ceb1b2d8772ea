"""Fault tests of the relay, with printed figures: SIGKILL mid-batch, two replicas, outages.

The relay runs as ``dotmac-events outbox relay`` subprocesses against a private
redis-server; a consumer in this process records what arrives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from dotmac.events import ConsumerOptions, Event, EventBus, create_bus
from dotmac_events_outbox import Outbox, OutboxRelay

Until = Callable[..., Awaitable[None]]


class Received:
    """What a consumer saw: every delivery, in order."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.by_key: dict[str, list[int]] = defaultdict(list)

    def __call__(self, event: Event) -> None:
        self.ids.append(event.event_id)
        self.by_key[event.key or ""].append(event.payload["seq"])

    @property
    def unique(self) -> int:
        return len(set(self.ids))

    def figures(self, published: int) -> dict[str, int]:
        return {
            "published": published,
            "received": len(self.ids),
            "lost": published - self.unique,
            "duplicates": len(self.ids) - self.unique,
        }

    def first_deliveries_in_key_order(self) -> bool:
        # Redelivered duplicates repeat earlier rows; the first delivery of each row
        # must follow the write order of its key.
        for seqs in self.by_key.values():
            seen: set[int] = set()
            firsts = [s for s in seqs if not (s in seen or seen.add(s))]
            if firsts != sorted(firsts):
                return False
        return True


_RUNNING: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_relay_left_behind() -> Iterator[None]:
    yield
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def relay_process(pg_dsn: str, url: str, table: str, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, DOTMAC_EVENTS_OUTBOX_DB=pg_dsn, DOTMAC_EVENTS_LOAD_PLUGINS="redis,outbox")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dotmac.events.cli", "outbox", "relay", "--url", url, "--table", table]
        + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _RUNNING.append(proc)
    return proc


async def stop_relay(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM, then the JSON line the relay prints when it stopped."""
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    last = json.loads(out.splitlines()[-1])
    assert last["relay"] == "stopped", out
    return dict(last)


async def kill_relay(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no cleanup, no rollback from the client, the transaction dies with the socket."""
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.communicate, timeout=10)


async def publish_rows(
    conn: asyncpg.Connection[Any], outbox: Outbox, topic: str, *, transactions: int, per_tx: int, keys: int
) -> int:
    seq = 0
    for _ in range(transactions):
        async with conn.transaction():
            batch = []
            for _ in range(per_tx):
                batch.append(Event(topic=topic, payload={"seq": seq}, key=f"k{seq % keys}"))
                seq += 1
            await outbox.publish_many(conn, batch)
    return seq


async def sent_rows(conn: asyncpg.Connection[Any], outbox: Outbox) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {outbox.name.sql} WHERE sent_at IS NOT NULL"))


@pytest.fixture
async def outbox(conn: asyncpg.Connection[Any], table: str) -> Outbox:
    box = Outbox(table=table)
    await box.install(conn)
    return box


@pytest.fixture
async def consumer(redis_url: str) -> AsyncIterator[EventBus]:
    async with create_bus(redis_url) as bus:
        yield bus


async def all_sent(
    conn: asyncpg.Connection[Any], outbox: Outbox, total: int, until: Until, what: str
) -> None:
    """Await every one of the ``total`` rows marked sent."""

    async def done() -> bool:
        return await sent_rows(conn, outbox) == total

    await until(done, timeout=60, what=what)


@dataclass
class Rig:
    """What the relay fault tests share: the outbox, its database, the broker and a
    consumer on it."""

    conn: asyncpg.Connection[Any]
    outbox: Outbox
    pg_dsn: str
    redis_url: str
    consumer: EventBus
    until: Until

    def relay(self, *extra: str) -> subprocess.Popen[str]:
        return relay_process(self.pg_dsn, self.redis_url, self.outbox.name.table, *extra)

    async def subscribe(self, scenario: str) -> tuple[str, Received]:
        """A topic of this test with the consumer on it, and what the consumer receives."""
        topic = f"outbox.{scenario}.{uuid.uuid4().hex[:8]}"
        received = Received()
        options = ConsumerOptions(prefetch_count=500)
        await self.consumer.subscribe(topic, received, group="g", options=options)
        return topic, received

    async def backlog(self, scenario: str, **rows: int) -> tuple[Received, int]:
        """:meth:`subscribe`, then ``publish_rows(**rows)`` written to the outbox: what the
        consumer receives and the number of rows."""
        topic, received = await self.subscribe(scenario)
        return received, await publish_rows(self.conn, self.outbox, topic, **rows)

    async def sent(self) -> int:
        return await sent_rows(self.conn, self.outbox)

    async def all_sent(self, total: int, what: str) -> None:
        await all_sent(self.conn, self.outbox, total, self.until, what)


@pytest.fixture
def rig(
    conn: asyncpg.Connection[Any],
    outbox: Outbox,
    pg_dsn: str,
    redis_url: str,
    consumer: EventBus,
    until: Until,
) -> Rig:
    return Rig(conn, outbox, pg_dsn, redis_url, consumer, until)


async def test_relay_killed_mid_batch_loses_nothing(rig: Rig, report: Any) -> None:
    received, total = await rig.backlog("kill", transactions=30, per_tx=150, keys=25)

    kills = 0
    sent_at_kill = []
    for fraction in (0.3, 0.65):
        proc = rig.relay("--batch-size", "150")
        floor = await rig.sent()

        async def progressed(target: int = max(floor + 1, int(total * fraction))) -> bool:
            return await rig.sent() >= target

        await rig.until(progressed, timeout=60, what=f"{fraction:.0%} of the rows sent")
        await kill_relay(proc)
        kills += 1
        sent_at_kill.append(await rig.sent())

    proc = rig.relay("--batch-size", "150")
    await rig.all_sent(total, "every row sent after the restarts")
    await rig.until(lambda: received.unique == total, timeout=60, what="every event received")
    final = await stop_relay(proc)
    figures = received.figures(total)
    at_kills = "/".join(map(str, sent_at_kill))
    report(**figures, kills=kills, sent_at_kills=at_kills, last_relay_sent=final["sent"])
    assert figures["lost"] == 0
    assert sent_at_kill == sorted(sent_at_kill) and sent_at_kill[-1] < total
    assert received.first_deliveries_in_key_order()


async def test_relay_killed_between_send_and_mark_resends_that_batch_only(rig: Rig, report: Any) -> None:
    """The worst moment, made certain: the batch is in the broker, its rows not yet marked."""
    received, total = await rig.backlog("window", transactions=5, per_tx=100, keys=7)

    # A SHARE lock lets the relay read and lock its rows but makes its UPDATE wait.
    blocker: asyncpg.Connection[Any] = await asyncpg.connect(rig.pg_dsn)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute(f"LOCK TABLE {rig.outbox.name.sql} IN SHARE MODE")
    proc = rig.relay("--batch-size", "100")
    try:
        await rig.until(lambda: received.unique == 100, timeout=30, what="the first batch in the broker")

        async def relay_waits_on_the_lock() -> bool:
            return bool(
                await rig.conn.fetchval(
                    "SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name = 'dotmac-events-outbox-relay' AND query LIKE 'UPDATE%'"
                )
            )

        await rig.until(relay_waits_on_the_lock, what="the relay's UPDATE waiting")
        await kill_relay(proc)
    finally:
        await tx.rollback()
        await blocker.close()
    assert await rig.sent() == 0

    proc = rig.relay("--batch-size", "100")
    await rig.all_sent(total, "every row sent after the restart")
    await rig.until(lambda: len(received.ids) >= total + 100, what="the resent batch")
    await stop_relay(proc)
    figures = received.figures(total)
    report(**figures, kills=1)
    assert figures["lost"] == 0
    assert figures["duplicates"] == 100  # exactly the batch that was sent but not marked
    assert received.first_deliveries_in_key_order()


async def test_two_replicas_share_the_work_without_double_sending(rig: Rig, report: Any) -> None:
    topic, received = await rig.subscribe("replicas")
    args = ("--batch-size", "40", "--max-buckets", "3", "--poll-interval", "0.2")
    procs = [rig.relay(*args) for _ in range(2)]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert json.loads(line)["relay"] == "started"
    # Written while both replicas run, by two writers at once.
    other: asyncpg.Connection[Any] = await asyncpg.connect(rig.pg_dsn)
    try:
        counts = await asyncio.gather(
            publish_rows(rig.conn, rig.outbox, topic, transactions=20, per_tx=50, keys=64),
            publish_rows(other, rig.outbox, f"{topic}.b", transactions=20, per_tx=50, keys=64),
        )
    finally:
        await other.close()
    earliest = ConsumerOptions(start_from="earliest")
    await rig.consumer.subscribe(f"{topic}.b", received, group="g", options=earliest)
    total = sum(counts)
    await rig.all_sent(total, "every row sent")
    await rig.until(lambda: received.unique == total, timeout=60, what="every event received")
    stops = [await stop_relay(proc) for proc in procs]
    split = [s["sent"] for s in stops]
    figures = received.figures(total)
    report(**figures, replica_sent="/".join(map(str, split)))
    assert figures["lost"] == 0
    # No crash, so no row may go out twice: the replicas' counts add up exactly.
    assert sum(split) == total
    assert figures["duplicates"] == 0
    assert min(split) > 0, split
    assert received.first_deliveries_in_key_order()


async def test_relay_keeps_rows_through_a_broker_outage(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, until: Until, report: Any
) -> None:
    from dotmac_events_redis.testing import RedisServer

    topic = f"outbox.outage.{uuid.uuid4().hex[:8]}"
    with RedisServer(appendonly=True, appendfsync="always") as server:
        relay = OutboxRelay(pg_dsn, server.url, table=outbox.name.table, poll_interval=0.1, send_timeout=2.0)
        async with relay:
            await publish_rows(conn, outbox, topic, transactions=1, per_tx=10, keys=3)

            async def ten_sent() -> bool:
                return await sent_rows(conn, outbox) == 10

            await until(ten_sent, what="the first rows sent")
            server.stop()
            async with conn.transaction():
                await outbox.publish_many(
                    conn, [Event(topic=topic, payload={"seq": 10 + i}, key=f"k{i % 3}") for i in range(10)]
                )

            async def failures_recorded() -> bool:
                return bool(
                    await conn.fetchval(
                        f"SELECT count(*) = 10 FROM {outbox.name.sql} "
                        "WHERE sent_at IS NULL AND attempts > 0 AND last_error IS NOT NULL"
                    )
                )

            await until(failures_recorded, timeout=30, what="failed attempts recorded on the rows")
            failed_attempts = relay.stats.failures
            server.start()

            await all_sent(conn, outbox, 20, until, "the rows sent after the broker came back")
        received = Received()
        async with create_bus(server.url) as bus:
            await bus.subscribe(topic, received, group="late", options=ConsumerOptions(start_from="earliest"))
            await until(lambda: received.unique == 20, what="20 events in the stream")
    figures = received.figures(20)
    report(**figures, relay_failures=failed_attempts)
    assert figures["lost"] == 0 and failed_attempts > 0
    assert received.first_deliveries_in_key_order()
