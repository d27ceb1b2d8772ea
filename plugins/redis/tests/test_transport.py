"""Behaviour of the Redis transport against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from dotmac.events import (
    ConsumerOptions,
    Event,
    EventBus,
    EventMetadata,
    PublishError,
    TransportError,
    TransportUnavailableError,
)
from dotmac.events.testing import Collector, wait_for
from dotmac_events_redis import RedisConfig, RedisTransport
from dotmac_events_redis._group import GroupSubscription
from dotmac_events_redis.testing import RedisServer, free_port
from dotmac_events_redis.transport import RELEASED_IDLE_MS

T = 15.0  # seconds to wait for anything that should happen promptly


def topic() -> str:
    return f"t.{uuid.uuid4().hex[:8]}"


def transport_of(bus: EventBus) -> RedisTransport:
    assert isinstance(bus.transport, RedisTransport)
    return bus.transport


def group_sub(bus: EventBus) -> GroupSubscription:
    subs = [s for s in transport_of(bus)._subs if isinstance(s, GroupSubscription)]
    assert len(subs) == 1
    return subs[0]


async def test_entries_are_readable_by_a_plain_client(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    async with buses() as bus:
        event = Event(
            topic=name,
            payload={"id": 7, "text": "café"},
            key="order-7",
            headers={"x-user": "u1"},
            tenant_id="acme",
            metadata=EventMetadata(event_type="order.created", correlation_id="c-1"),
        )
        await bus.publish(event)
        entries = await raw.xrange(f"{prefix}{name}")
        assert len(entries) == 1
        entry_id, fields = entries[0]
        assert fields["ce_id"] == event.event_id
        assert fields["ce_type"] == "order.created"
        assert fields["ce_specversion"] == "1.0"
        assert fields["ce_tenantid"] == "acme"
        assert fields["ce_correlationid"] == "c-1"
        assert fields["content-type"] == "application/json"
        assert fields["x-user"] == "u1"
        assert fields["@key"] == "order-7"
        assert json.loads(fields["@data"]) == {"id": 7, "text": "café"}
        messages = await bus.transport.read(name)
        assert [m.position for m in messages] == [entry_id]
        assert messages[0].key == "order-7"
        assert messages[0].headers["x-user"] == "u1"
        assert "@data" not in messages[0].headers


async def test_event_without_key_has_no_key_field(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    async with buses() as bus:
        seen = Collector()
        await bus.subscribe(name, seen, group="g")
        await bus.publish(Event(topic=name, payload={"a": 1}))
        await seen.wait_count(1, T)
        assert seen.events[0].key is None
        ((_id, fields),) = await raw.xrange(f"{prefix}{name}")
        assert "@key" not in fields


async def test_namespaces_do_not_see_each_other(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    async with buses(namespace="acme") as acme, buses(namespace="globex") as globex:
        acme_seen, globex_seen = Collector(), Collector()
        await acme.subscribe(name, acme_seen, group="g")
        await globex.subscribe(name, globex_seen, group="g")
        await acme.publish(Event(topic=name, payload={"who": "acme"}))
        await globex.publish(Event(topic=name, payload={"who": "globex"}))
        await acme_seen.wait_count(1, T)
        await globex_seen.wait_count(1, T)
        assert acme_seen.payloads("who") == ["acme"]
        assert globex_seen.payloads("who") == ["globex"]
        assert await raw.exists(f"{prefix}acme:{name}", f"{prefix}globex:{name}") == 2


async def test_new_group_latest_skips_the_backlog(buses: Callable[..., EventBus]) -> None:
    name = topic()
    async with buses() as bus:
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
        latest, earliest = Collector(), Collector()
        await bus.subscribe(name, latest, group="new-only")
        await bus.subscribe(name, earliest, group="backlog", options=ConsumerOptions(start_from="earliest"))
        await bus.publish(Event(topic=name, payload={"i": 3}))
        await earliest.wait_count(4, T)
        await latest.wait_count(1, T)
        assert latest.payloads("i") == [3]
        assert earliest.payloads("i") == [0, 1, 2, 3]


async def test_prefetch_bounds_unacknowledged_entries(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    gate = asyncio.Event()

    async def blocked(event: Event) -> None:
        await gate.wait()

    async with buses(prefetch_count=5) as bus:
        seen = Collector(on_event=blocked)
        await bus.subscribe(name, seen, group="g", options=ConsumerOptions(prefetch_count=50))
        sub = group_sub(bus)
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(20)])
        # The reader parks when 5 entries are out; it cannot fetch more from there.
        await wait_for(
            lambda: len(sub._outstanding) == 5 and not sub._room.is_set(), T, what="a full prefetch"
        )
        summary = await raw.xpending(f"{prefix}{name}", "g")
        assert summary["pending"] == 5
        gate.set()
        await seen.wait_count(20, T)
        assert sorted(seen.payloads("i")) == list(range(20))


async def test_an_ack_the_writer_abandons_still_frees_its_prefetch_slot(
    buses: Callable[..., EventBus],
) -> None:
    # The ack writer settles each acknowledged entry itself (no callback per future):
    # an ack it never wrote, because it stopped first, must settle the entry too.
    name = topic()
    gate = asyncio.Event()

    async def blocked(event: Event) -> None:
        await gate.wait()

    async with buses() as bus:
        await bus.subscribe(name, Collector(on_event=blocked), group="g")
        sub = group_sub(bus)
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
        await wait_for(lambda: len(sub._outstanding) == 3, T, what="3 entries in the core")
        delivery = next(iter(sub._outstanding.values()))
        written = delivery.ack_nowait()
        assert written is not None and not written.done()
        await transport_of(bus)._acks.stop()
        assert isinstance(written.exception(), TransportUnavailableError)
        assert (delivery.key, delivery.entry_id) not in sub._outstanding
        assert len(sub._outstanding) == 2
        gate.set()


async def test_stop_does_not_wait_for_the_blocking_read(buses: Callable[..., EventBus]) -> None:
    async with buses(block_timeout=30.0) as bus:
        group = await bus.subscribe(topic(), Collector(), group="g")
        broadcast = await bus.subscribe(topic(), Collector())
        await wait_for(
            lambda: all(s._phase == "read" for s in transport_of(bus)._subs), T, what="blocking reads"
        )
        started = time.monotonic()
        await group.stop()
        await broadcast.stop()
        assert time.monotonic() - started < 2.0


async def test_release_on_stop_goes_to_a_live_member_without_waiting_for_min_idle(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str, report: Any
) -> None:
    name = topic()
    gate = asyncio.Event()

    async def blocked(event: Event) -> None:
        await gate.wait()

    settings = {"min_idle_time": 60.0, "reclaim_interval": 0.2}
    async with buses(**settings) as first, buses(**settings) as second:
        held = Collector(on_event=blocked)
        sub = await first.subscribe(name, held, group="g")
        events = [Event(topic=name, payload={"i": i}) for i in range(10)]
        await first.publish_many(events)
        await wait_for(lambda: held.total_calls == 1, T, what="the first handler call")
        survivor = Collector()
        await second.subscribe(name, survivor, group="g")
        stopped = time.monotonic()
        await sub.stop(timeout=0.1)
        await survivor.wait_unique(10, T)
        elapsed = time.monotonic() - stopped
        assert set(survivor.ids) == {e.event_id for e in events}
        assert elapsed < 60.0 / 4
        report(released=10, redelivered=len(set(survivor.ids)), seconds_to_redelivery=round(elapsed, 2))
        gate.set()


async def test_long_handler_keeps_its_entry(buses: Callable[..., EventBus]) -> None:
    """The lease keeps an entry whose handler runs far longer than min_idle_time."""
    name = topic()
    gate = asyncio.Event()

    async def slow(event: Event) -> None:
        await gate.wait()

    settings = {"min_idle_time": 0.3, "reclaim_interval": 0.05}
    async with buses(**settings) as busy_bus, buses(**settings) as idle_bus:
        busy = Collector(on_event=slow)
        await busy_bus.subscribe(name, busy, group="g")
        await busy_bus.publish(Event(topic=name, payload={"i": 1}))
        await wait_for(lambda: busy.total_calls == 1, T, what="the slow handler to start")
        thief = Collector()
        await idle_bus.subscribe(name, thief, group="g")
        counters = transport_of(idle_bus).counters
        runs = counters["reclaim_runs"]
        # 20 reclaim passes over at least 1 s: more than 3 x min_idle_time.
        started = time.monotonic()
        await wait_for(
            lambda: counters["reclaim_runs"] >= runs + 20 and time.monotonic() - started > 1.0,
            T,
            what="reclaim passes",
        )
        gate.set()
        await busy.wait_count(1, T)
        assert thief.total_calls == 0
        assert busy.total_calls == 1


async def test_entries_another_member_took_are_withdrawn_before_handling(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    """A member cut off longer than min_idle_time loses its queued entries to another
    member; when it notices (lease renewal), it drops them instead of handling them too."""
    name = topic()
    key = f"{prefix}{name}"
    gate = asyncio.Event()

    async def first_blocks(event: Event) -> None:
        if event.payload["i"] == 0:
            await gate.wait()

    async with buses(min_idle_time=0.3, reclaim_interval=60.0) as bus:
        seen = Collector(on_event=first_blocks)
        await bus.subscribe(name, seen, group="g")
        sub = group_sub(bus)
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(5)])
        await wait_for(lambda: len(sub._outstanding) == 5, T, what="5 entries in the core")
        ids = sorted((i for _key, i in sub._outstanding), key=lambda i: tuple(map(int, i.split("-"))))
        queued = ids[1:]  # the first one is in the (blocked) handler
        await raw.xclaim(key, "g", "other", 0, queued, justid=True)
        counters = transport_of(bus).counters
        await wait_for(lambda: counters["withdrawn"] == 4, T, what="4 withdrawn entries")
        gate.set()
        await bus.publish(Event(topic=name, payload={"i": 5}))
        await seen.wait(lambda c: 5 in c.payloads("i"), T, "the event after the withdrawn ones")
        assert sorted(seen.payloads("i")) == [0, 5]
        await wait_for(lambda: bus.subscriptions[0].handled == 2, T, what="the acks")
        owners = {p["consumer"] for p in await raw.xpending_range(key, "g", "-", "+", 10)}
        assert owners == {"other"}


async def test_idle_consumers_are_removed_only_without_pending_entries(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    key = f"{prefix}{name}"
    async with buses(consumer_idle_timeout=0.3, reclaim_interval=0.05, min_idle_time=60.0) as bus:
        await raw.xgroup_create(key, "g", id="$", mkstream=True)
        await raw.xreadgroup("g", "ghost-empty", {key: ">"}, count=1)
        await raw.xadd(key, {"ce_id": "x", "@data": "{}"})
        await raw.xreadgroup("g", "ghost-owner", {key: ">"}, count=1)
        await bus.subscribe(name, Collector(), group="g")

        async def consumers() -> dict[str, int]:
            return {c["name"]: c["pending"] for c in await raw.xinfo_consumers(key, "g")}

        deadline = time.monotonic() + T
        while "ghost-empty" in (current := await consumers()):
            assert time.monotonic() < deadline, current
            await asyncio.sleep(0.05)
        assert current.get("ghost-owner") == 1, "a consumer with a pending entry was removed"
        runs = transport_of(bus).counters["reclaim_runs"]
        await wait_for(lambda: transport_of(bus).counters["reclaim_runs"] > runs + 10, T, what="more passes")
        assert (await consumers()).get("ghost-owner") == 1


async def test_config_max_deliveries_applies_when_options_leave_it_unset(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    key = f"{prefix}{name}"
    async with buses(max_deliveries=2, min_idle_time=0.1, reclaim_interval=0.05) as bus:
        handler = Collector()
        dead = Collector()
        await bus.subscribe(f"{name}.dlq", dead)
        await raw.xgroup_create(key, "g", id="$", mkstream=True)
        await bus.publish(Event(topic=name, payload={"poison": True}))
        # A consumer that took the entry and died twice already (delivery count 2).
        ((_stream, [(entry_id, _fields)]),) = await raw.xreadgroup("g", "crashed", {key: ">"}, count=1)
        await raw.xclaim(key, "g", "crashed", 0, [entry_id], retrycount=2, justid=True)
        await bus.subscribe(name, handler, group="g")
        await dead.wait_count(1, T)
        assert handler.total_calls == 0
        assert dead.events[0].headers["x-dlq-reason"] == "max_deliveries"
        assert dead.events[0].headers["x-dlq-error-message"].startswith("delivered 3 times")
        deadline = time.monotonic() + T
        while (await raw.xpending(key, "g"))["pending"]:
            assert time.monotonic() < deadline, "the dead-lettered entry was not acknowledged"
            await asyncio.sleep(0.02)


async def test_dead_letter_streams_are_not_trimmed(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    async with buses(max_stream_length=5) as bus:
        failing = Collector(fail=lambda e, n: RuntimeError("no"))
        sub = await bus.subscribe(name, failing, group="g", options=ConsumerOptions(max_retries=0))
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(30)])
        await wait_for(lambda: sub.dead_lettered == 30, T, what="30 dead letters")
        assert await raw.xlen(f"{prefix}{name}.dlq") == 30
        # Trimming happens on publish; everything above is acknowledged now.
        await sub.stop()
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(30, 32)])
        assert await raw.xlen(f"{prefix}{name}") == 5
        assert await raw.xlen(f"{prefix}{name}.dlq") == 30
        assert len(await bus.dlq.list(f"{name}.dlq", limit=100)) == 30


async def test_reply_streams_expire_and_go_away_with_their_bus(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    async with buses() as server:
        await server.subscribe(name, lambda e: {"n": e.payload["n"] + 1}, group="rpc")
        client = buses()
        await client.start()
        reply = await client.request(Event(topic=name, payload={"n": 1}), timeout=T)
        assert reply.payload == {"n": 2}
        reply_key = f"{prefix}{client._reply_topic}"
        assert 0 < await raw.ttl(reply_key) <= 3600
        await client.close()
        assert not await raw.exists(reply_key)


# Capped, a publish is a script call that also checks the length; uncapped, an XADD.
@pytest.mark.parametrize("cap", [100_000, None])
async def test_publish_to_a_key_of_another_type_fails_precisely(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str, cap: int | None
) -> None:
    name = topic()
    await raw.set(f"{prefix}{name}", "not a stream")
    async with buses(max_stream_length=cap) as bus:
        with pytest.raises(PublishError, match="WRONGTYPE") as info:
            await bus.publish(Event(topic=name, payload={}))
        assert not info.value.retriable
        healthy = topic()
        await bus.publish(Event(topic=healthy, payload={}))  # the bus is still usable
        assert await raw.xlen(f"{prefix}{healthy}") == 1
        assert transport_of(bus).counters["published"] == 1


async def test_publish_many_across_streams(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    """A batch spanning streams goes out as one MULTI block; a refused stream fails it
    without taking the other streams' entries down with it."""
    first, second, broken = topic(), topic(), topic()
    await raw.set(f"{prefix}{broken}", "not a stream")
    async with buses(max_stream_length=3) as bus:
        await bus.publish_many([Event(topic=t, payload={"i": i}) for i in range(6) for t in (first, second)])
        assert await raw.xlen(f"{prefix}{first}") == 3
        assert await raw.xlen(f"{prefix}{second}") == 3
        with pytest.raises(PublishError, match="WRONGTYPE"):
            await bus.publish_many([Event(topic=first, payload={}), Event(topic=broken, payload={})])
        single = [m.position for m in await bus.transport.read(first)]
        assert len(single) == 4  # the entry for the healthy stream went in (trimmed at the next publish)


async def test_start_fails_fast_when_redis_is_unreachable(buses: Callable[..., EventBus]) -> None:
    bus = buses(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransportUnavailableError) as info:
        await bus.start()
    assert info.value.retriable
    assert time.monotonic() - started < 5.0


async def test_subscriptions_resume_after_redis_restart_without_persistence(
    private_server: Callable[..., RedisServer], buses: Callable[..., EventBus]
) -> None:
    """Redis comes back empty: groups are created again and nothing published after is missed."""
    server = private_server()
    name = topic()
    async with buses(server.url, reconnect_backoff_max=0.2) as consumer, buses(server.url) as producer:
        grouped, broadcast = Collector(), Collector()
        await consumer.subscribe(name, grouped, group="g")
        await consumer.subscribe(name, broadcast)
        await producer.publish(Event(topic=name, payload={"i": 0}))
        await grouped.wait_count(1, T)
        await broadcast.wait_count(1, T)
        server.restart()
        # The producer's pooled connection is dead; publish retries on a new one.
        await producer.publish(Event(topic=name, payload={"i": 1}))
        await grouped.wait_count(2, T)
        await broadcast.wait_count(2, T)
        assert grouped.payloads("i") == [0, 1]
        assert broadcast.payloads("i") == [0, 1]


async def test_no_password_in_logs_or_errors(
    private_server: Callable[..., RedisServer],
    buses: Callable[..., EventBus],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "correct-horse-battery"
    server = private_server(password=secret)
    caplog.set_level(logging.DEBUG)
    wrong = buses(f"redis://:wrong-{secret}@127.0.0.1:{server.port}/0")
    with pytest.raises(TransportError) as info:
        await wrong.start()
    assert not info.value.retriable
    assert secret not in str(info.value)
    async with buses(server.url, reconnect_backoff_max=0.1) as bus:
        name = topic()
        seen = Collector()
        await bus.subscribe(name, seen, group="g")
        await bus.publish(Event(topic=name, payload={}))
        await seen.wait_count(1, T)
        server.restart()  # reconnects log warnings
        await bus.publish(Event(topic=name, payload={}))
        await seen.wait_count(2, T)
        assert secret not in repr(bus.transport) and secret not in repr(bus.transport.config)
    assert caplog.records, "expected some log lines to check"
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_released_entries_look_idle_for_a_year() -> None:
    # Far above any sane min_idle_time, yet far below "now" in ms (no negative times).
    assert RELEASED_IDLE_MS >= 300 * 24 * 3600 * 1000
    assert RELEASED_IDLE_MS < time.time() * 1000 / 10


def test_unclosed_transport_warns() -> None:
    transport = RedisTransport(RedisConfig())
    transport._started = True
    with pytest.warns(ResourceWarning):
        transport.__del__()
    transport._started = False


def test_dead_letters_listed_and_replayed_with_the_cli(redis_url: str, prefix: str) -> None:
    """``dotmac-events dlq list`` and ``dlq replay`` against Redis."""
    import io

    from dotmac.events import create_bus
    from dotmac.events.cli import main

    url = f"{redis_url}?key_prefix={prefix}"
    name = topic()

    async def fail_three() -> None:
        async with create_bus(url) as bus:
            failing = Collector(fail=lambda e, n: RuntimeError("boom"))
            sub = await bus.subscribe(name, failing, group="g", options=ConsumerOptions(max_retries=0))
            await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
            await wait_for(lambda: sub.dead_lettered == 3, T, what="3 dead letters")

    asyncio.run(fail_three())
    out = io.StringIO()
    assert main(["dlq", "list", f"{name}.dlq", "--url", url], out=out) == 0
    letters = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [dl["payload"]["i"] for dl in letters] == [0, 1, 2]
    assert {dl["reason"] for dl in letters} == {"max_retries"}
    assert {dl["original_topic"] for dl in letters} == {name}
    out = io.StringIO()
    assert (
        main(["dlq", "replay", f"{name}.dlq", "--url", url, "--event-id", letters[1]["event_id"]], out=out)
        == 0
    )
    assert json.loads(out.getvalue())["replayed"] == 1

    async def read_back() -> list[int]:
        async with create_bus(url) as bus:
            return [json.loads(m.value)["i"] for m in await bus.transport.read(name)]

    assert asyncio.run(read_back()) == [0, 1, 2, 1]


# -- the writers -------------------------------------------------------------------------
def record_writes(writer: Any) -> list[tuple[int, bool]]:
    """(batch size, written in the caller's task) of each write of ``writer``."""
    writes: list[tuple[int, bool]] = []
    write = writer._write

    async def recording(batch: list[Any], link: Any) -> None:
        writes.append((len(batch), link is writer._direct_link))
        await write(batch, link)

    writer._write = recording
    return writes


async def test_a_lone_publish_is_written_in_the_callers_task_concurrent_ones_are_batched(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    async with buses() as bus:
        await bus.publish(Event(topic=name, payload={"i": -1}))  # connections are open
        writes = record_writes(transport_of(bus)._publisher)
        await bus.publish(Event(topic=name, payload={"i": 0}))
        assert writes == [(1, True)]
        writes.clear()
        await asyncio.gather(*(bus.publish(Event(topic=name, payload={"i": i})) for i in range(1, 51)))
        # The first goes straight out; the others queue meanwhile and go in one batch.
        assert writes == [(1, True), (49, False)]
        entries = await raw.xrange(f"{prefix}{name}")
        assert len(entries) == 52


async def test_a_cancelled_direct_publish_leaves_the_publisher_usable(
    buses: Callable[..., EventBus], raw: aioredis.Redis, prefix: str
) -> None:
    name = topic()
    async with buses(publish_timeout=T) as bus:
        publisher = transport_of(bus)._publisher
        await bus.publish(Event(topic=name, payload={"i": 0}))
        writes = record_writes(publisher)
        # Writes wait on the server, so the first publish is still in flight when
        # the second one comes and when the first is cancelled.
        await raw.execute_command("CLIENT", "PAUSE", int(T * 1000), "WRITE")
        try:
            cancelled = asyncio.create_task(bus.publish(Event(topic=name, payload={"i": 1})))
            await wait_for(lambda: publisher._direct == 1, T)
            queued = asyncio.create_task(bus.publish(Event(topic=name, payload={"i": 2})))
            await wait_for(lambda: len(publisher._batch) == 1, T)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert publisher._direct == 0
        finally:
            await raw.execute_command("CLIENT", "UNPAUSE")
        await asyncio.wait_for(queued, T)
        assert writes == [(1, True), (1, False)]
        await bus.publish(Event(topic=name, payload={"i": 3}))
        assert writes[-1] == (1, True)
        await asyncio.wait_for(publisher.drain(), T)
        values = [json.loads(fields["@data"])["i"] for _id, fields in await raw.xrange(f"{prefix}{name}")]
        assert values[0] == 0 and values[-2:] == [2, 3]


async def test_publishes_and_acks_survive_a_flushed_script_cache_and_killed_connections(
    buses: Callable[..., EventBus], raw: aioredis.Redis
) -> None:
    name = topic()
    client_name = f"victim-{uuid.uuid4().hex[:8]}"
    async with buses(client_name=client_name) as bus:
        seen = Collector()
        await bus.subscribe(name, seen, group="g")
        await bus.publish(Event(topic=name, payload={"i": 0}))
        await seen.wait_count(1, T)
        await raw.script_flush()
        killed = 0
        for info in await raw.client_list():
            if info.get("name") == client_name and "xreadgroup" not in info.get("cmd", ""):
                killed += await raw.client_kill_filter(_id=info["id"])
        assert killed >= 2  # the publisher's and the ack writer's at least
        await bus.publish(Event(topic=name, payload={"i": 1}))
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in (2, 3)])
        await seen.wait_count(4, T)
        group = group_sub(bus)
        await wait_for(lambda: not group._outstanding, T, what="acks written")
        assert sorted(e.payload["i"] for e in seen.events) == [0, 1, 2, 3]
        pending = await raw.xpending(f"{bus.transport.config.key_prefix}{name}", "g")
        assert pending["pending"] == 0
