"""Memory transport specifics: bounded queues, group persistence, redelivery, persistence log."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
import uuid
from pathlib import Path

import pytest
from attrs import evolve

from dotmac.events import (
    ConfigurationError,
    ConsumerOptions,
    Event,
    EventBus,
    Message,
    QueueFullError,
    create_bus,
)
from dotmac.events.testing import Collector, wait_for
from dotmac_events_memory import (
    MemoryConfig,
    create_memory_bus,
    default_persistence_dir,
    read_persistence_log,
)


@pytest.fixture
def name() -> str:
    return f"mem-{uuid.uuid4().hex[:8]}"


async def test_full_queue_fails_when_configured(name: str) -> None:
    async with create_bus(f"memory://{name}?max_queue_size=3&overflow=fail") as bus:
        gate = asyncio.Event()

        async def stuck(event: Event) -> None:
            await gate.wait()

        await bus.subscribe("q", stuck, group="g", options=ConsumerOptions(prefetch_count=1))
        sent = 0
        with pytest.raises(QueueFullError, match="group 'g' on 'q' has no room for an event"):
            for i in range(10):
                await bus.publish(Event(topic="q", payload={"i": i}))
                sent += 1
        # 1 with the handler, 1 waiting for room in the runner, 3 queued: nothing grew past the bound.
        assert sent <= 5
        stats = bus.transport.stats()["q"]["holders"]["group 'g'"]  # type: ignore[attr-defined]
        assert stats["ready"] == 3
        gate.set()


async def test_full_queue_makes_publish_wait_then_proceed(name: str) -> None:
    async with create_bus(f"memory://{name}?max_queue_size=3&publish_timeout=10") as bus:
        gate = asyncio.Event()
        seen = Collector(on_event=lambda e: gate.wait())
        await bus.subscribe("q", seen, group="g", options=ConsumerOptions(prefetch_count=1))

        def ready() -> int:
            return int(bus.transport.stats()["q"]["holders"]["group 'g'"]["ready"])  # type: ignore[attr-defined]

        await bus.publish(Event(topic="q", payload={"i": 0}))
        # One with the handler (prefetch_count=1), then two queued.
        await wait_for(lambda: seen.total_calls == 1 and ready() == 0, 5, what="the first event taken")
        await bus.publish_many([Event(topic="q", payload={"i": i}) for i in range(1, 3)])
        assert ready() == 2
        batch = [Event(topic="q", payload={"i": i}) for i in (3, 4)]
        publishing = asyncio.create_task(bus.publish_many(batch))
        for _ in range(3):  # memory publishing runs to its first wait within a loop turn
            await asyncio.sleep(0)
        assert not publishing.done(), "a batch that does not fit must wait"
        assert ready() == 2, "nothing of a waiting batch is stored"
        gate.set()
        await asyncio.wait_for(publishing, 10)
        await seen.wait_count(5, 10)
        assert seen.payloads("i") == list(range(5))


async def test_a_batch_is_all_or_nothing(name: str) -> None:
    async with create_bus(f"memory://{name}?max_queue_size=3&overflow=fail") as bus:
        gate = asyncio.Event()
        seen = Collector(on_event=lambda e: gate.wait())
        await bus.subscribe("q", seen, group="g", options=ConsumerOptions(prefetch_count=1))

        def ready() -> int:
            return int(bus.transport.stats()["q"]["holders"]["group 'g'"]["ready"])  # type: ignore[attr-defined]

        await bus.publish(Event(topic="q", payload={"i": 0}))
        # One with the handler (prefetch_count=1), then two queued.
        await wait_for(lambda: seen.total_calls == 1 and ready() == 0, 5, what="the first event taken")
        await bus.publish_many([Event(topic="q", payload={"i": i}) for i in range(1, 3)])
        assert ready() == 2
        no_room = "no room for a batch of 2 events.*nothing was stored"
        with pytest.raises(QueueFullError, match=no_room) as full:
            await bus.publish_many([Event(topic="q", payload={"i": i}) for i in (3, 4)])
        assert full.value.retriable
        assert ready() == 2
        with pytest.raises(QueueFullError, match="needs 4 places.*at most 3") as never:
            await bus.publish_many([Event(topic="q", payload={"i": i}) for i in range(3, 7)])
        assert not never.value.retriable
        assert ready() == 2
        gate.set()
        await seen.wait_count(3, 10)
        assert seen.payloads("i") == [0, 1, 2]


async def test_waiting_publish_times_out(name: str) -> None:
    gate = asyncio.Event()
    async with create_bus(f"memory://{name}?max_queue_size=1&publish_timeout=0.05") as bus:
        await bus.subscribe("q", lambda e: gate.wait(), group="g", options=ConsumerOptions(prefetch_count=1))
        with pytest.raises(QueueFullError, match="had no room for an event for 0.05s"):
            for i in range(5):
                await bus.publish(Event(topic="q", payload={"i": i}))
        gate.set()


async def test_group_keeps_events_while_it_has_no_member(name: str) -> None:
    async with create_bus(f"memory://{name}") as bus:
        first = await bus.subscribe("orders", Collector(), group="billing")
        await first.stop()
        await bus.publish_many([Event(topic="orders", payload={"i": i}) for i in range(5)])
        later = Collector()
        await bus.subscribe("orders", later, group="billing")
        await later.wait_count(5, 5)
        assert later.payloads("i") == list(range(5))


async def test_released_events_are_redelivered_with_a_count(name: str) -> None:
    async with create_bus(f"memory://{name}") as bus:
        gate = asyncio.Event()
        started = asyncio.Event()

        async def blocked(event: Event) -> None:
            started.set()
            await gate.wait()

        sub = await bus.subscribe("t", blocked, group="g")
        await bus.publish(Event(topic="t", payload={"i": 1}))
        await asyncio.wait_for(started.wait(), 5)
        await sub.stop(timeout=0.01)
        assert sub.released == 1
        counts: list[int] = []
        original = bus.transport.subscribe

        async def spy(spec, sink):  # type: ignore[no-untyped-def]
            async def counting(delivery):  # type: ignore[no-untyped-def]
                counts.append(delivery.delivery_count)
                await sink(delivery)

            return await original(spec, counting)

        bus.transport.subscribe = spy  # type: ignore[method-assign]
        again = Collector()
        await bus.subscribe("t", again, group="g")
        await again.wait_count(1, 5)
        assert counts == [2]


async def test_brokers_are_shared_by_name_and_isolated_otherwise(name: str) -> None:
    async with create_bus(f"memory://{name}") as a, create_bus(f"memory://{name}") as b:
        async with create_bus(f"memory://{name}-other") as c:
            seen_b, seen_c = Collector(), Collector()
            await b.subscribe("t", seen_b)
            await c.subscribe("t", seen_c)
            await a.publish(Event(topic="t"))
            await seen_b.wait_count(1, 5)
            assert seen_c.events == []


async def test_broker_is_dropped_with_its_last_bus(name: str) -> None:
    from dotmac_events_memory import transport

    async with create_bus(f"memory://{name}") as bus:
        await bus.publish(Event(topic="t"))
        assert any(key[1] == name for key in transport._brokers)
    assert not any(key[1] == name for key in transport._brokers)


async def test_persistence_log_can_be_read_and_replayed(name: str, tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    config = MemoryConfig(
        name=name, max_queue_size=1000, enable_persistence=True, persistence_path=str(log_path)
    )
    sent = [Event(topic="audit", payload={"i": i, "text": "Zoë"}, key=f"k{i}") for i in range(3)]
    async with create_memory_bus(config) as bus:
        await bus.publish_many(sent)
    messages = list(read_persistence_log(log_path))
    assert [m.headers["ce_id"] for m in messages] == [e.event_id for e in sent]
    assert [m.key for m in messages] == ["k0", "k1", "k2"]
    async with create_bus(f"memory://{name}-replay") as bus:
        seen = Collector()
        await bus.subscribe("audit", seen)
        await bus.transport.publish(messages)
        await seen.wait_count(3, 5)
    assert seen.ids == [e.event_id for e in sent]
    assert seen.events[0].payload == {"i": 0, "text": "Zoë"}


async def test_retention_bounds_what_can_be_read(name: str) -> None:
    async with create_bus(f"memory://{name}?retention=3") as bus:
        await bus.publish_many([Event(topic="t", payload={"i": i}) for i in range(10)])
        kept = await bus.transport.read("t", limit=100)
        assert [m.position for m in kept] == ["7", "8", "9"]
        assert await bus.transport.read("unknown") == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"retention": -1}, "retention"),
        ({"publish_timeout": 0}, "publish_timeout"),
        ({"overflow": "drop"}, "overflow"),
        ({"name": ""}, "name"),
    ],
)
def test_config_validation(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        MemoryConfig(**kwargs)  # type: ignore[arg-type]


def test_url_names_the_broker() -> None:
    assert create_bus("memory://orders-test").transport.config.name == "orders-test"  # type: ignore[attr-defined]
    assert create_bus("memory://").transport.config.name == "default"  # type: ignore[attr-defined]


async def test_groups_report_members_pending_and_lag(name: str) -> None:
    async with create_bus(f"memory://{name}") as bus:
        assert bus.capabilities.introspection
        assert await bus.groups("orders") == []
        gate = asyncio.Event()
        seen = Collector(on_event=lambda e: gate.wait())
        sub = await bus.subscribe("orders", seen, group="billing", options=ConsumerOptions(prefetch_count=2))
        await bus.subscribe("orders", Collector())  # broadcast: not a group
        await bus.publish_many([Event(topic="orders", payload={"i": i}) for i in range(10)])
        await wait_for(lambda: seen.total_calls == 1, 5, what="the first event in the handler")
        (info,) = await bus.groups("orders")
        assert (info.topic, info.group, info.members) == ("orders", "billing", (sub.name,))
        assert info.pending == 2  # the prefetch window
        assert info.lag == 8
        assert info.oldest_pending_age is not None and info.oldest_pending_age >= 0
        gate.set()
        await seen.wait_count(10, 5)
        await wait_for(lambda: sub.handled == 10, 5, what="acks")
        (info,) = await bus.groups("orders")
        assert (info.pending, info.lag, info.oldest_pending_age) == (0, 0, None)
        await sub.stop()
        (info,) = await bus.groups("orders")
        assert info.members == ()


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private system temp directory, and a working directory that must stay empty."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return root


async def test_persistence_log_defaults_to_a_private_temp_dir(name: str, temp_root: Path) -> None:
    sent = [Event(topic="audit", payload={"i": i}) for i in range(2)]
    async with create_memory_bus(MemoryConfig(name=f"{name}/x", enable_persistence=True)) as bus:
        await bus.publish_many(sent)
    assert list(Path.cwd().iterdir()) == []
    directory = default_persistence_dir()
    assert directory.parent == temp_root
    assert directory.name == (f"dotmac-events-{os.getuid()}" if hasattr(os, "getuid") else "dotmac-events")
    # The name's slash cannot leave the directory.
    log_file = directory / f"{name}_x.jsonl"
    assert [m.headers["ce_id"] for m in read_persistence_log(log_file)] == [e.event_id for e in sent]
    if hasattr(os, "getuid"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
async def test_persistence_refuses_a_default_dir_it_does_not_own(name: str, temp_root: Path) -> None:
    elsewhere = temp_root / "elsewhere"
    elsewhere.mkdir()
    default_persistence_dir().symlink_to(elsewhere)
    config = MemoryConfig(name=name, enable_persistence=True)
    with pytest.raises(ConfigurationError, match="set persistence_path"):
        async with create_memory_bus(config):
            pass
    assert list(elsewhere.iterdir()) == []
    # An explicit path still works.
    explicit = temp_root / "mine.jsonl"
    async with create_memory_bus(evolve(config, persistence_path=str(explicit))) as bus:
        await bus.publish(Event(topic="audit"))
    assert len(list(read_persistence_log(explicit))) == 1


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners")
async def test_persistence_refuses_a_default_dir_another_user_made(
    name: str, temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # as if this process ran as another user
    other = default_persistence_dir()
    other.mkdir()  # the directory for that user exists, but the real user owns it
    with pytest.raises(ConfigurationError, match="not a directory owned by this user"):
        async with create_memory_bus(MemoryConfig(name=name, enable_persistence=True)):
            pass
    assert list(other.iterdir()) == []


async def test_persistence_dir_that_cannot_be_made_is_a_configuration_error(
    name: str, temp_root: Path
) -> None:
    blocker = default_persistence_dir()
    blocker.write_text("a file where the directory should be")
    with pytest.raises(ConfigurationError, match="cannot be created"):
        async with create_memory_bus(MemoryConfig(name=name, enable_persistence=True)):
            pass


async def test_invalid_utf8_in_a_persistence_log_is_dead_lettered(name: str, tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    config = MemoryConfig(
        name=name, max_queue_size=1000, enable_persistence=True, persistence_path=str(log_path)
    )
    sent = [Event(topic="audit", payload={"i": i}, headers={"x-origin": "shop"}) for i in range(3)]
    async with create_memory_bus(config) as bus:
        await bus.publish_many(sent)
    # Someone edits the log with a tool that writes Latin-1: the middle entry's header
    # value is no longer UTF-8.
    lines = log_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"x-origin":"shop"', b'"x-origin":"caf\xe9"')
    log_path.write_bytes(b"".join(lines))
    messages = list(read_persistence_log(log_path))
    assert messages[1].headers["x-origin"] == "caf\udce9"
    async with create_bus(f"memory://{name}-replay") as bus:
        seen = Collector()
        await bus.subscribe("audit", seen)
        await bus.transport.publish(messages)
        await seen.wait_count(2, 5)
        dead = await wait_for_letters(bus, 1)
    assert seen.ids == [sent[0].event_id, sent[2].event_id]
    assert dead[0].headers["ce_id"] == sent[1].event_id
    assert dead[0].headers["x-dlq-reason"] == "decode"
    assert dead[0].headers["x-origin"] == "caf\udce9"  # kept as it arrived, not replaced by U+FFFD


async def wait_for_letters(bus: EventBus, count: int) -> list[Message]:
    letters: list[Message] = []

    async def enough() -> bool:
        letters[:] = await bus.transport.read("audit.dlq", limit=10)
        return len(letters) >= count

    deadline = asyncio.get_running_loop().time() + 5
    while not await enough():
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {count} dead letters"
        await asyncio.sleep(0.01)
    return letters


async def test_topics_lists_every_topic_but_reply_topics(name: str) -> None:
    async with create_bus(f"memory://{name}") as bus:
        assert bus.capabilities.introspection
        assert await bus.topics() == []
        await bus.subscribe("b", Collector(), group="billing")  # subscribed, nothing published
        await bus.publish_many([Event(topic=t, payload={}) for t in ("c", "a.dlq", "a", "dotmac.reply.x")])
        assert await bus.topics() == ["a", "a.dlq", "b", "c"]
    async with create_bus(f"memory://{name}-other") as other:
        assert await other.topics() == []  # another broker's topics are not listed
