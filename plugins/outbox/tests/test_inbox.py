"""The inbox: redelivered events skip the handler; failed handlers leave no record."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.errors import ConfigurationError
from dotmac_events_outbox import InboxStore, MemoryInboxStore, Outbox, PostgresInbox, idempotent
from dotmac_events_outbox.redis_inbox import RedisInboxStore

Until = Callable[..., Awaitable[None]]


@pytest.fixture
async def pg_inbox(pool: asyncpg.Pool[Any]) -> AsyncIterator[PostgresInbox]:
    inbox = PostgresInbox(pool, table=f"inbox_{uuid.uuid4().hex[:10]}")
    await inbox.install()
    yield inbox
    await inbox.close()


@pytest.fixture(params=["memory", "redis", "postgres"])
async def store(
    request: pytest.FixtureRequest, redis_url: str, pool: asyncpg.Pool[Any]
) -> AsyncIterator[InboxStore]:
    if request.param == "memory":
        yield MemoryInboxStore()
    elif request.param == "redis":
        redis_store = RedisInboxStore(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}")
        yield redis_store
        await redis_store.close()
    else:
        inbox = PostgresInbox(pool, table=f"inbox_{uuid.uuid4().hex[:10]}")
        await inbox.install()
        yield inbox
        await inbox.close()


async def test_redelivered_events_are_acked_without_a_second_call(
    store: InboxStore, memory_url: str, until: Until, report: Any
) -> None:
    calls: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    failed_once: set[str] = set()

    async def handler(event: Event) -> None:
        calls[event.payload["name"]] += 1
        if event.payload.get("flaky") and event.event_id not in failed_once:
            failed_once.add(event.event_id)
            raise RuntimeError("transient")
        effects[event.payload["name"]] += 1

    first = Event(topic="orders", payload={"name": "a", "flaky": True}, key="k")
    redelivery = Event(topic="orders", payload={"name": "a", "flaky": True}, key="k", metadata=first.metadata)
    last = Event(topic="orders", payload={"name": "b"}, key="k")
    options = ConsumerOptions(max_retries=2, concurrency=1)
    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", idempotent(handler, store=store, group="g"), group="g", options=options)
        for event in (first, redelivery, redelivery, last):
            await bus.publish(event)
        await until(lambda: effects["b"] == 1, what="the last event")
    report(
        store=type(store).__name__,
        deliveries=4,
        handler_calls=sum(calls.values()),
        effects=sum(effects.values()),
    )
    # a: one failed call, one retry that recorded it, two redeliveries skipped.
    assert calls == Counter(a=2, b=1)
    assert effects == Counter(a=1, b=1)
    assert await store.seen("g", first.event_id)
    assert not await store.seen("other-group", first.event_id)


async def test_a_handler_that_always_fails_leaves_no_record(
    store: InboxStore, memory_url: str, until: Until
) -> None:
    dead: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("always")

    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders.dlq", dead.append, group="ops")
        handler = idempotent(broken, store=store, group="g")
        await bus.subscribe("orders", handler, group="g", options=ConsumerOptions(max_retries=1))
        event = Event(topic="orders", payload={})
        await bus.publish(event)
        await until(lambda: len(dead) == 1, what="the dead letter")
    assert not await store.seen("g", event.event_id)


async def test_memory_records_expire_after_the_retention(until: Until) -> None:
    store = MemoryInboxStore(retention=0.05)
    await store.mark("g", "e1")
    assert await store.seen("g", "e1")

    async def expired() -> bool:
        return not await store.seen("g", "e1")

    await until(expired, timeout=2, what="the record to expire")


async def test_redis_records_carry_the_retention_as_ttl(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    async with RedisInboxStore(redis_url, prefix=prefix, retention=120) as store:
        await store.mark("billing", "e-1")
        client = aioredis.Redis.from_url(redis_url)
        try:
            ttl = await client.pttl(f"{prefix}:billing:e-1")
            await client.delete(f"{prefix}:billing:e-1")
        finally:
            await client.aclose()
    assert 0 < ttl <= 120_000
    assert "@" not in repr(store)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        MemoryInboxStore(retention=0)
    with pytest.raises(ConfigurationError):
        idempotent(lambda e: None, store=MemoryInboxStore(), group="")


async def create_effects(pool: asyncpg.Pool[Any]) -> str:
    name = f"effects_{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {name} (event_id text NOT NULL, attempt int NOT NULL)")
    return name


async def test_transactional_failure_rolls_back_the_write_and_the_record(
    pg_inbox: PostgresInbox, pool: asyncpg.Pool[Any], memory_url: str, until: Until
) -> None:
    effects = await create_effects(pool)
    attempts: list[int] = []
    visible_at_start: list[int] = []

    async def apply(event: Event, conn: Any) -> None:
        attempts.append(len(attempts) + 1)
        visible_at_start.append(await conn.fetchval(f"SELECT count(*) FROM {effects}"))
        await conn.execute(f"INSERT INTO {effects} VALUES ($1, $2)", event.event_id, attempts[-1])
        if attempts[-1] == 1:
            raise RuntimeError("fails after its write")

    done: list[str] = []
    handler = pg_inbox.transactional(apply, group="billing")

    async def handle(event: Event) -> None:
        await handler(event)
        done.append(event.event_id)

    event = Event(topic="orders", payload={})
    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", handle, group="billing", options=ConsumerOptions(max_retries=3))
        await bus.publish(event)
        await until(lambda: done == [event.event_id], what="the retry")
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT event_id, attempt FROM {effects}")
    assert [tuple(r) for r in rows] == [(event.event_id, 2)]  # the first attempt's write rolled back
    assert visible_at_start == [0, 0]
    assert await pg_inbox.seen("billing", event.event_id)


async def test_concurrent_duplicates_run_the_handler_once(
    pg_inbox: PostgresInbox, pool: asyncpg.Pool[Any], until: Until
) -> None:
    effects = await create_effects(pool)
    release = asyncio.Event()
    calls = 0

    async def apply(event: Event, conn: Any) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(f"INSERT INTO {effects} VALUES ($1, 1)", event.event_id)
        await release.wait()

    handler = pg_inbox.transactional(apply, group="g")
    event = Event(topic="orders", payload={})
    first = asyncio.create_task(handler(event))
    await until(lambda: calls == 1, what="the first call")
    second = asyncio.create_task(handler(event))

    async def second_waits_on_the_first() -> bool:
        async with pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) >= 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            )

    await until(second_waits_on_the_first, what="the duplicate waiting on the record")
    release.set()
    await asyncio.gather(first, second)
    assert calls == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {effects}") == 1


async def test_purge_and_expired_records(pg_inbox: PostgresInbox, pool: asyncpg.Pool[Any]) -> None:
    for i in range(5):
        await pg_inbox.mark("g", f"e{i}")
    async with pool.acquire() as conn:
        await conn.execute(
            f"UPDATE {pg_inbox.name.sql} SET handled_at = now() - interval '30 days' "
            "WHERE event_id IN ('e0', 'e1')"
        )
        assert not await pg_inbox.seen("g", "e0")
        async with conn.transaction():
            # An expired record left behind is taken over: the event counts as new.
            assert await pg_inbox.claim(conn, "g", "e1")
            assert not await pg_inbox.claim(conn, "g", "e2")
    assert await pg_inbox.purge() == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {pg_inbox.name.sql}") == 4


async def test_inbox_and_outbox_in_one_transaction(
    pg_inbox: PostgresInbox, pool: asyncpg.Pool[Any], memory_url: str, until: Until
) -> None:
    """Consume, write, publish: the reaction is written once, whatever the redeliveries."""
    outbox = Outbox(table=f"outbox_{uuid.uuid4().hex[:10]}")
    async with pool.acquire() as conn:
        await outbox.install(conn)

    async def react(event: Event, conn: Any) -> None:
        await outbox.publish(conn, Event(topic="invoices", payload={"order": event.payload["id"]}))

    handled: list[str] = []
    handler = pg_inbox.transactional(react, group="billing")

    async def handle(event: Event) -> None:
        await handler(event)
        handled.append(event.event_id)

    order = Event(topic="orders", payload={"id": 1})
    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", handle, group="billing")
        for _ in range(3):
            await bus.publish(order)
        await until(lambda: len(handled) == 3, what="three deliveries")
    async with pool.acquire() as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {outbox.name.sql}") == 1


async def test_crash_after_commit_before_ack_has_no_double_effect(
    pool: asyncpg.Pool[Any], pg_inbox: PostgresInbox, pg_dsn: str, redis_url: str, until: Until, report: Any
) -> None:
    effects = await create_effects(pool)
    topic = f"inbox.crash.{uuid.uuid4().hex[:8]}"
    # A short idle time so the live member reclaims the dead one's entries quickly.
    url = f"{redis_url}?min_idle_time=0.5&reclaim_interval=0.2"
    script = Path(__file__).with_name("inbox_consumer_proc.py")
    env = dict(os.environ, DOTMAC_EVENTS_LOAD_PLUGINS="redis,outbox")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--url", url, "--topic", topic, "--group", "billing", "--db", pg_dsn]
        + ["--inbox-table", pg_inbox.name.table, "--effects-table", effects, "--crash-after", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        events = [Event(topic=topic, payload={"i": i}, key=str(i % 2)) for i in range(20)]
        async with create_bus(url) as bus:
            await bus.publish_many(events)
            code = await asyncio.to_thread(proc.wait, 30)
            assert code == 17
            calls: Counter[str] = Counter()
            handled: Counter[str] = Counter()
            inner = pg_inbox.transactional(_count_into(calls, effects), group="billing")

            async def survivor(event: Event) -> None:
                await inner(event)
                handled[event.event_id] += 1

            await bus.subscribe(topic, survivor, group="billing", name="survivor")

            async def every_event_applied_and_the_crashed_one_back() -> bool:
                async with pool.acquire() as conn:
                    applied = await conn.fetchval(f"SELECT count(DISTINCT event_id) FROM {effects}")
                return bool(applied == 20 and sum(handled.values()) > sum(calls.values()))

            await until(every_event_applied_and_the_crashed_one_back, timeout=30, what="every event applied")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT event_id, count(*) AS n FROM {effects} GROUP BY event_id")
    per_event = {r["event_id"]: r["n"] for r in rows}
    report(
        published=20,
        effects=sum(per_event.values()),
        double_effects=sum(n - 1 for n in per_event.values()),
        lost=20 - len(per_event),
        handled_by_survivor=sum(handled.values()),
        skipped_by_inbox=sum(handled.values()) - sum(calls.values()),
    )
    assert per_event == {e.event_id: 1 for e in events}
    # The event whose commit preceded the crash came back and was skipped, not re-applied.
    assert sum(handled.values()) - sum(calls.values()) >= 1


def _count_into(calls: Counter[str], effects: str) -> Callable[[Event, Any], Awaitable[None]]:
    async def apply(event: Event, conn: Any) -> None:
        calls[event.event_id] += 1
        await conn.execute(f"INSERT INTO {effects} VALUES ($1, 1)", event.event_id)

    return apply


async def test_a_full_memory_store_forgets_the_oldest_record_first() -> None:
    store = MemoryInboxStore(max_entries=3)
    for name in ("a", "b", "c", "a", "d"):
        await store.mark("g", name)
    # "a" was marked again after "b" and "c", so "b" is the oldest and went first.
    assert [await store.seen("g", n) for n in ("a", "b", "c", "d")] == [True, False, True, True]
