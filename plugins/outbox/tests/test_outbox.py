"""The outbox: writes in the caller's transaction, validation before writing, the relay."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from dotmac.events import ConsumerOptions, Event, EventMetadata, create_bus
from dotmac.events.errors import (
    BusStateError,
    ConfigurationError,
    EncodeError,
    InvalidTopicError,
    MessageTooLargeError,
    ValidationError,
)
from dotmac_events_outbox import Outbox, OutboxRelay, TransactionRequiredError

Until = Callable[..., Awaitable[None]]


async def count_rows(conn: asyncpg.Connection[Any], outbox: Outbox, where: str = "true") -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {outbox.name.sql} WHERE {where}"))


@pytest.fixture
async def outbox(conn: asyncpg.Connection[Any], table: str) -> Outbox:
    box = Outbox(table=table)
    await box.install(conn)
    return box


async def test_install_is_idempotent_and_safe_to_race(pg_dsn: str, table: str) -> None:
    box = Outbox(schema="outbox_tests", table=table)
    conns = [await asyncpg.connect(pg_dsn) for _ in range(3)]
    try:
        await asyncio.gather(*(box.install(c) for c in conns))
        await box.install(conns[0])
        assert await count_rows(conns[0], box) == 0
    finally:
        for c in conns:
            await c.close()


def test_table_names_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="table"):
        Outbox(table='x"; DROP TABLE y; --')
    with pytest.raises(ConfigurationError, match="schema"):
        Outbox(schema="")


async def test_publish_writes_the_wire_form_in_the_transaction(
    conn: asyncpg.Connection[Any], outbox: Outbox
) -> None:
    event = Event(
        topic="orders.created",
        payload={"id": 7},
        key="7",
        tenant_id="acme",
        headers={"x-trace": "abc"},
        metadata=EventMetadata(correlation_id="c-1"),
    )
    async with conn.transaction():
        await outbox.publish(conn, event)
    row = await conn.fetchrow(f"SELECT * FROM {outbox.name.sql}")
    assert row is not None
    assert row["event_id"] == event.event_id
    assert (row["topic"], row["key"], bytes(row["value"])) == ("orders.created", "7", b'{"id":7}')
    headers = json.loads(row["headers"])
    assert headers["ce_id"] == event.event_id
    assert headers["ce_tenantid"] == "acme"
    assert headers["ce_correlationid"] == "c-1"
    assert headers["x-trace"] == "abc"
    assert headers["content-type"] == "application/json"
    assert row["sent_at"] is None


async def test_bad_input_raises_before_anything_is_written(
    conn: asyncpg.Connection[Any], outbox: Outbox
) -> None:
    good = Event(topic="orders", payload={"ok": True})
    async with conn.transaction():
        with pytest.raises(ValidationError, match=r"events\[1\]"):
            await outbox.publish_many(conn, [good, {"topic": "orders"}])  # type: ignore[list-item]
        with pytest.raises(EncodeError):
            await outbox.publish_many(conn, [good, Event(topic="orders", payload={"b": b"raw"})])
        small = Outbox(table=outbox.name.table, max_message_bytes=10)
        with pytest.raises(MessageTooLargeError):
            await small.publish(conn, Event(topic="orders", payload={"text": "x" * 100}))
    with pytest.raises(InvalidTopicError):
        Event(topic="bad topic", payload={})
    # Outside a transaction the row would commit on its own: refused.
    with pytest.raises(TransactionRequiredError):
        await outbox.publish(conn, good)
    assert await count_rows(conn, outbox) == 0


async def test_encoder_of_a_bus_is_used(conn: asyncpg.Connection[Any], table: str, memory_url: str) -> None:
    bus = create_bus(memory_url, source="billing", validators={"orders": lambda p: "id" in p})
    box = Outbox(table=table, encoder=bus.encode)
    await box.install(conn)
    async with conn.transaction():
        with pytest.raises(ValidationError):
            await box.publish(conn, Event(topic="orders", payload={"no": "id"}))
    async with conn.transaction():
        await box.publish(conn, Event(topic="orders", payload={"id": 1}))
    headers = json.loads(await conn.fetchval(f"SELECT headers FROM {box.name.sql}"))
    assert headers["ce_source"] == "billing"


async def test_relay_delivers_events_unchanged(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, memory_url: str, until: Until
) -> None:
    events = [
        Event(
            topic="orders.created",
            payload={"n": i},
            key=f"k{i % 3}",
            tenant_id="acme",
            headers={"x-n": str(i)},
        )
        for i in range(20)
    ]
    received: list[Event] = []
    async with create_bus(memory_url) as consumer:
        await consumer.subscribe("orders.created", received.append, group="g")
        async with conn.transaction():
            await outbox.publish_many(conn, events)
        async with OutboxRelay(pg_dsn, memory_url, table=outbox.name.table) as relay:
            await until(lambda: len(received) == 20, what="20 events")

            async def all_marked() -> bool:
                return await count_rows(conn, outbox, "sent_at IS NULL") == 0

            await until(all_marked, what="every row marked sent")
        assert relay.stats.sent == 20
    by_id = {e.event_id: e for e in received}
    for sent in events:
        got = by_id[sent.event_id]
        assert (got.topic, got.payload, got.key, got.tenant_id) == (
            sent.topic,
            sent.payload,
            sent.key,
            "acme",
        )
        assert dict(got.headers) == dict(sent.headers)
        assert got.metadata.occurred_at == sent.metadata.occurred_at
    assert await count_rows(conn, outbox, "sent_at IS NULL") == 0
    assert await count_rows(conn, outbox, "sent_at IS NOT NULL AND attempts = 1") == 20


async def test_rolled_back_transactions_publish_nothing(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, memory_url: str, until: Until, report: Any
) -> None:
    received: list[str] = []
    async with create_bus(memory_url) as consumer:
        await consumer.subscribe("orders", lambda e: received.append(e.payload["tx"]), group="g")
        async with OutboxRelay(pg_dsn, memory_url, table=outbox.name.table, poll_interval=0.05):
            for i in range(20):
                try:
                    async with conn.transaction():
                        await outbox.publish(conn, Event(topic="orders", payload={"tx": f"r{i}"}))
                        if i % 2:
                            raise RuntimeError("business rule failed")
                except RuntimeError:
                    pass
            # A committed marker after everything: once it arrived, the relay has passed them all.
            async with conn.transaction():
                await outbox.publish(conn, Event(topic="orders", payload={"tx": "marker"}))
            await until(lambda: "marker" in received, what="the marker")
    committed = {f"r{i}" for i in range(0, 20, 2)}
    rolled_back = {f"r{i}" for i in range(1, 20, 2)}
    report(committed=len(committed), rolled_back=len(rolled_back), received=len(received) - 1)
    assert set(received) - {"marker"} == committed
    assert not rolled_back & set(received)
    assert await count_rows(conn, outbox) == 11


async def test_per_key_order_across_many_transactions(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, memory_url: str, until: Until
) -> None:
    seen: dict[str, list[int]] = defaultdict(list)

    def handle(event: Event) -> None:
        seen[event.key or ""].append(event.payload["seq"])

    total = 0
    async with create_bus(memory_url) as consumer:
        await consumer.subscribe("orders", handle, group="g", options=ConsumerOptions(concurrency=1))
        async with OutboxRelay(pg_dsn, memory_url, table=outbox.name.table, batch_size=7, max_buckets=2):
            for seq in range(30):
                async with conn.transaction():
                    await outbox.publish_many(
                        conn, [Event(topic="orders", payload={"seq": seq}, key=f"k{k}") for k in range(5)]
                    )
                    total += 5
            await until(lambda: sum(map(len, seen.values())) >= total, what="every event")
    assert sum(map(len, seen.values())) == total
    for key, seqs in seen.items():
        assert seqs == sorted(seqs), key


async def test_notify_wakes_the_relay_long_before_its_poll(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, memory_url: str, until: Until
) -> None:
    received: list[Event] = []
    async with create_bus(memory_url) as consumer:
        await consumer.subscribe("orders", received.append, group="g")
        async with OutboxRelay(pg_dsn, memory_url, table=outbox.name.table, poll_interval=60.0) as relay:
            await until(lambda: relay._listener is not None, what="the LISTEN connection")
            async with conn.transaction():
                await outbox.publish(conn, Event(topic="orders", payload={}))
            await until(lambda: len(received) == 1, timeout=5.0, what="a NOTIFY wake-up")


async def test_polling_alone_works_without_listen(
    conn: asyncpg.Connection[Any], table: str, pg_dsn: str, memory_url: str, until: Until
) -> None:
    box = Outbox(table=table, notify=False)
    await box.install(conn)
    received: list[Event] = []
    async with create_bus(memory_url) as consumer:
        await consumer.subscribe("orders", received.append, group="g")
        async with OutboxRelay(pg_dsn, memory_url, table=table, poll_interval=0.05, listen=False) as relay:
            async with conn.transaction():
                await box.publish(conn, Event(topic="orders", payload={}))
            await until(lambda: len(received) == 1, what="a polled row")
            assert relay._listener is None


async def test_retention_removes_old_sent_rows_only(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, memory_url: str, until: Until
) -> None:
    async with conn.transaction():
        await outbox.publish_many(conn, [Event(topic="orders", payload={"i": i}) for i in range(6)])
    async with create_bus(memory_url) as bus:
        # Driven by hand on a bus of the caller's: no background task.
        relay = OutboxRelay(pg_dsn, bus, table=outbox.name.table, retention=3600)
        assert await relay.relay_once() == 6
        async with conn.transaction():
            await outbox.publish(conn, Event(topic="orders", payload={"pending": True}))
        await conn.execute(
            f"UPDATE {outbox.name.sql} SET sent_at = now() - interval '2 hours' "
            f"WHERE id IN (SELECT id FROM {outbox.name.sql} WHERE sent_at IS NOT NULL ORDER BY id LIMIT 4)"
        )
        assert await relay.cleanup() == 4
        assert await count_rows(conn, outbox, "sent_at IS NOT NULL") == 2
        assert await count_rows(conn, outbox, "sent_at IS NULL") == 1
        await relay.close()
        assert bus.started  # the caller's bus stays open


async def test_retention_zero_deletes_at_once(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, memory_url: str, until: Until
) -> None:
    async with conn.transaction():
        await outbox.publish_many(conn, [Event(topic="orders", payload={"i": i}) for i in range(5)])
    received: list[Event] = []
    async with create_bus(memory_url) as consumer:
        await consumer.subscribe("orders", received.append, group="g", options=ConsumerOptions())
        async with OutboxRelay(pg_dsn, memory_url, table=outbox.name.table, retention=0):
            await until(lambda: len(received) == 5)
    assert await count_rows(conn, outbox) == 0


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:s3cret@db.example:5432/app?sslmode=require",
        "postgresql://app@db.example/app?password=s3cret",
    ],
)
async def test_the_password_stays_out_of_reprs_and_errors(dsn: str, table: str) -> None:
    relay = OutboxRelay(dsn, "memory://", table=table)
    assert "s3cret" not in repr(relay)
    assert "db.example" in repr(relay)
    unreachable = dsn.replace("db.example:5432", "127.0.0.1:1").replace("db.example", "127.0.0.1:1")
    with pytest.raises(ConnectionError) as info:
        await OutboxRelay(unreachable, "memory://", table=table)._connect()
    assert "s3cret" not in str(info.value)


def test_a_dsn_that_is_not_a_postgresql_url_is_refused_without_echoing_it(table: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        OutboxRelay("host=db.example user=app password=s3cret", "memory://", table=table)
    assert "s3cret" not in str(info.value)


async def test_a_bus_of_yours_must_be_started_first(pg_dsn: str, table: str, memory_url: str) -> None:
    relay = OutboxRelay(pg_dsn, create_bus(memory_url), table=table)
    with pytest.raises(BusStateError):
        await relay.start()


async def test_a_destination_the_transport_refuses_holds_back_only_its_own_rows(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, until: Until, report: Any
) -> None:
    # A bounded memory queue that fails when full: "slow" fills up, "fast" must not wait.
    url = f"memory://outbox-{uuid.uuid4().hex[:8]}?max_queue_size=5&overflow=fail"
    release = asyncio.Event()
    slow: list[str] = []
    fast: list[str] = []

    async def stuck(event: Event) -> None:
        await release.wait()
        slow.append(event.event_id)

    async with create_bus(url) as consumer:
        await consumer.subscribe("slow", stuck, group="g", options=ConsumerOptions(prefetch_count=1))
        await consumer.subscribe("fast", lambda e: fast.append(e.event_id), group="g")
        async with conn.transaction():
            events = []
            for i in range(20):
                events.append(Event(topic="slow", payload={"i": i}))
                events.append(Event(topic="fast", payload={"i": i}, key=f"k{i}"))
            await outbox.publish_many(conn, events)
        relay = OutboxRelay(pg_dsn, url, table=outbox.name.table, poll_interval=0.05, max_backoff=0.2)
        async with relay:
            await until(lambda: len(set(fast)) == 20, what="every fast event while slow is stuck")

            async def slow_rows_failing() -> bool:
                return bool(
                    await conn.fetchval(
                        f"SELECT count(*) > 0 FROM {outbox.name.sql} WHERE topic = 'slow' "
                        "AND sent_at IS NULL AND last_error LIKE 'QueueFullError%'"
                    )
                )

            await until(slow_rows_failing, what="the refused rows recorded")
            pending_while_stuck = await count_rows(conn, outbox, "sent_at IS NULL")
            release.set()
            await until(lambda: len(set(slow)) == 20, what="the slow events after the queue drained")
    report(
        fast_unique=len(set(fast)),
        fast_duplicates=len(fast) - len(set(fast)),
        slow_unique=len(set(slow)),
        slow_duplicates=len(slow) - len(set(slow)),
        pending_while_stuck=pending_while_stuck,
        relay_failures=relay.stats.failures,
    )
    assert set(fast) == {e.event_id for e in events if e.topic == "fast"}
    assert 0 < pending_while_stuck <= 20
    assert relay.stats.failures > 0


async def test_relay_reconnects_after_its_database_sessions_are_killed(
    conn: asyncpg.Connection[Any], outbox: Outbox, pg_dsn: str, memory_url: str, until: Until, report: Any
) -> None:
    received: list[str] = []
    async with create_bus(memory_url) as consumer:
        await consumer.subscribe("orders", lambda e: received.append(e.event_id), group="g")
        relay = OutboxRelay(pg_dsn, memory_url, table=outbox.name.table, poll_interval=0.2, max_backoff=0.2)
        async with relay:
            async with conn.transaction():
                await outbox.publish(conn, Event(topic="orders", payload={"n": 1}))
            await until(lambda: len(received) == 1, what="the first event")
            old_listener = relay._listener
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'dotmac-events-outbox-relay' AND datname = current_database()"
            )
            async with conn.transaction():
                await outbox.publish_many(
                    conn, [Event(topic="orders", payload={"n": n}) for n in range(2, 12)]
                )
            await until(lambda: len(set(received)) == 11, what="the events after the sessions were killed")
            await until(
                lambda: relay._listener is not None and relay._listener is not old_listener,
                what="a new LISTEN connection",
            )
    report(killed_sessions=killed, received=len(received), unique=len(set(received)))
    assert killed == 2  # the relay's working and listening connections
