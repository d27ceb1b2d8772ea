"""The ops page over HTTP: groups, the dead-letter browser and its filters, guarded replay;
and ``dotmac-events groups``."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from dotmac.events import ConsumerOptions, Event, NonRetryableError, create_bus
from dotmac.events.cli import main
from dotmac.events.testing import Collector
from dotmac_events_ops import OpsServer
from dotmac_events_redis.testing import RedisServer

T = 15.0
TOKEN = "t0ken-for-tests"


def fails_for(kinds: set[str]) -> Callable[[Event, int], BaseException | None]:
    def decide(event: Event, _count: int) -> BaseException | None:
        if event.payload.get("kind") in kinds:
            return NonRetryableError(f"cannot handle {event.payload['kind']}")
        return None

    return decide


async def test_browse_filter_and_replay_dead_letters(
    redis_server: Callable[[], RedisServer], registry: CollectorRegistry, topic: str, http: httpx.AsyncClient
) -> None:
    server = redis_server()
    fixed: set[str] = set()
    seen = Collector(
        fail=lambda e, c: None if e.payload["kind"] in fixed else fails_for({"bad", "odd"})(e, c)
    )
    async with create_bus(server.url) as bus:
        await bus.subscribe(topic, seen, group="billing", options=ConsumerOptions(max_retries=0))
        events = [Event(topic=topic, payload={"kind": k}) for k in ("ok", "bad", "odd")]
        await bus.publish_many(events)
        await seen.wait(lambda c: c.total_calls >= 3, T)
        async with OpsServer(bus, port=0, registry=registry, token=TOKEN) as ops:
            # The DLQ is written after the handler returned: wait for both letters.
            async def dlq_ids() -> list[str]:
                page = (await http.get(f"{ops.url}/dlq")).text
                return re.findall(r'data-event-id="([^"]+)"', page)

            await _until(lambda ids: len(ids) == 2, dlq_ids)
            index = await http.get(f"{ops.url}/")
            assert index.status_code == 200
            assert f"{topic}.dlq" in index.text and "billing" in index.text
            groups = (await http.get(f"{ops.url}/api/groups")).json()["groups"]
            assert [(g["topic"], g["group"], g["lag"], g["pending"]) for g in groups] == [
                (topic, "billing", 0, 0)
            ]

            # Filters: topic, group, error type, time.
            page = await http.get(f"{ops.url}/dlq", params={"group": "nobody"})
            assert "No dead letters match" in page.text
            page = await http.get(
                f"{ops.url}/dlq", params={"group": "billing", "error_type": "NonRetryableError"}
            )
            assert len(re.findall("data-event-id", page.text)) == 2
            page = await http.get(f"{ops.url}/dlq", params={"since": "2999-01-01T00:00"})
            assert "No dead letters match" in page.text
            page = await http.get(f"{ops.url}/dlq", params={"until": "2999-01-01T00:00", "topic": topic})
            assert len(re.findall("data-event-id", page.text)) == 2

            # One letter in full: headers and payload.
            bad = events[1].event_id
            letter = await http.get(f"{ops.url}/dlq/{topic}.dlq/{bad}")
            assert letter.status_code == 200
            assert "x-dlq-error-type" in letter.text and "cannot handle bad" in letter.text
            assert "&#34;kind&#34;: &#34;bad&#34;" in letter.text or '"kind": "bad"' in letter.text

            # Replay needs the confirmation and the token; then the handler sees it again.
            confirm = await http.get(f"{ops.url}/dlq/replay", params={"dlq": f"{topic}.dlq", "event_id": bad})
            assert confirm.status_code == 200 and bad in confirm.text
            form = {"dlq": f"{topic}.dlq", "event_id": bad, "token": TOKEN}
            assert (await http.post(f"{ops.url}/dlq/replay", data=form)).status_code == 400  # not confirmed
            wrong = {**form, "confirm": "yes", "token": "nope"}
            assert (await http.post(f"{ops.url}/dlq/replay", data=wrong)).status_code == 403
            fixed.add("bad")
            done = await http.post(f"{ops.url}/dlq/replay", data={**form, "confirm": "yes"})
            assert done.status_code == 303 and "replayed=1" in done.headers["location"]
            await seen.wait(lambda c: sum(1 for e in c.events if e.event_id == bad) == 1, T)
            assert seen.calls[bad] == 2  # once failed, once handled after the replay
            assert events[2].event_id not in {e.event_id for e in seen.events}  # not selected, not replayed


async def test_letters_are_escaped_and_bad_topics_refused(
    registry: CollectorRegistry, topic: str, http: httpx.AsyncClient
) -> None:
    hostile = "<script>alert(1)</script>"
    seen = Collector(fail=lambda e, c: NonRetryableError(hostile))
    async with create_bus("memory://") as bus, OpsServer(bus, port=0, registry=registry) as ops:
        await bus.subscribe(topic, seen, group="g", options=ConsumerOptions(max_retries=0))
        event = Event(topic=topic, payload={"note": hostile})
        await bus.publish(event)
        deadline = time.monotonic() + T
        while not (letters := await bus.dlq.list(f"{topic}.dlq")):
            assert time.monotonic() < deadline, "no dead letter"
            await asyncio.sleep(0.02)
        for url in (f"{ops.url}/dlq", f"{ops.url}/dlq/{topic}.dlq/{event.event_id}"):
            page = await http.get(url)
            assert page.status_code == 200 and hostile not in page.text
        assert "&lt;script&gt;" in page.text  # shown, as text
        assert (await http.get(f"{ops.url}/dlq/bad topic!/x")).status_code == 400
        assert letters[0].event_id == event.event_id


async def test_read_only_page_offers_no_replay(registry: CollectorRegistry, http: httpx.AsyncClient) -> None:
    async with create_bus("memory://") as bus, OpsServer(bus, port=0, registry=registry) as ops:
        page = await http.get(f"{ops.url}/dlq")
        assert "read-only" in page.text and "Replay" not in page.text
        assert (await http.get(f"{ops.url}/dlq/replay", params={"dlq": "x.dlq"})).status_code == 403
        response = await http.post(
            f"{ops.url}/dlq/replay", data={"dlq": "x.dlq", "event_id": "1", "confirm": "yes"}
        )
        assert response.status_code == 403


async def test_groups_command_prints_lag_and_members(
    redis_server: Callable[[], RedisServer], topic: str
) -> None:
    server = redis_server()
    async with create_bus(server.url) as bus:
        seen = Collector()
        sub = await bus.subscribe(topic, seen, group="billing")
        await bus.publish(Event(topic=topic, payload={}))
        await seen.wait_count(1, T)
        await sub.stop()
        await bus.publish_many([Event(topic=topic, payload={}) for _ in range(4)])
    out = io.StringIO()
    assert await _run_cli(["groups", "--url", server.url, "--topic", topic, "--json"], out) == 0
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (record["topic"], record["group"], record["lag"], record["pending"]) == (topic, "billing", 4, 0)
    out = io.StringIO()
    assert await _run_cli(["groups", "--url", server.url, "--topic", topic], out) == 0
    header, row = out.getvalue().splitlines()
    assert header.split() == ["TOPIC", "GROUP", "LAG", "PENDING", "OLDEST-PENDING-S", "MEMBERS"]
    assert row.split()[:4] == [topic, "billing", "4", "0"]


async def test_without_topics_every_topic_is_shown(
    redis_server: Callable[[], RedisServer], registry: CollectorRegistry, http: httpx.AsyncClient
) -> None:
    server = redis_server()  # a private server: its topics are this test's
    seen = Collector(fail=fails_for({"bad"}))
    async with create_bus(server.url) as bus:
        await bus.subscribe("orders", seen, group="billing", options=ConsumerOptions(max_retries=0))
        await bus.publish_many([Event(topic="orders", payload={"kind": k}) for k in ("ok", "bad")])
        await bus.publish(Event(topic="audit", payload={}))  # nobody consumes it
        await seen.wait(lambda c: c.total_calls >= 2, T)
        await _until(lambda t: "orders.dlq" in t, bus.topics)  # dead-lettered after the handler

        out = io.StringIO()
        assert await _run_cli(["groups", "--url", server.url, "--json"], out) == 0
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(r["topic"], r["group"], r["dead_letter"]) for r in records] == [
            ("audit", None, False),
            ("orders", "billing", False),
            ("orders.dlq", None, True),
        ]
        out = io.StringIO()
        assert await _run_cli(["groups", "--url", server.url], out) == 0
        rows = [line.split() for line in out.getvalue().splitlines()[1:]]
        assert [row[:3] for row in rows] == [
            ["audit", "-", "-"],
            ["orders", "billing", "0"],
            ["orders.dlq", "(dead", "letters)"],
        ]

        # What `dotmac-events ui` without --topic serves: every topic, dead letters marked.
        async with OpsServer(bus, port=0, registry=registry, all_topics=True) as ops:
            body = (await http.get(f"{ops.url}/api/groups")).json()
            assert body["topics"] == [
                {"topic": "audit", "groups": 0, "dead_letter": False},
                {"topic": "orders", "groups": 1, "dead_letter": False},
                {"topic": "orders.dlq", "groups": 0, "dead_letter": True},
            ]
            assert [(g["topic"], g["group"]) for g in body["groups"]] == [("orders", "billing")]
            assert ops.state.dlq_topics() == ["orders.dlq"]
            page = (await http.get(f"{ops.url}/")).text
            assert 'data-topic="audit"' in page and 'href="/dlq?dlq=orders.dlq"' in page
            # A topic published after the server started shows at the next refresh.
            await bus.publish(Event(topic="refunds", payload={}))
            body = (await http.get(f"{ops.url}/api/groups")).json()
            assert "refunds" in [t["topic"] for t in body["topics"]]


async def test_a_transport_that_cannot_list_topics_asks_for_them() -> None:
    from dotmac.events import EventBus, UnsupportedOperationError
    from dotmac.events.plugins import get_plugin_manager, get_registry
    from dotmac.events.transport import Transport
    from dotmac_events_memory import MemoryConfig
    from dotmac_events_memory.transport import MemoryTransport
    from dotmac_events_ops.cli import _all_topics

    class Unlisted(MemoryTransport):
        name = "unlisted"
        topics = Transport.topics  # the contract's default: not supported

    bus = EventBus(
        Unlisted(MemoryConfig(name="unlisted")), registry=get_registry(), plugin_manager=get_plugin_manager()
    )
    async with bus:
        with pytest.raises(UnsupportedOperationError, match="not supported by the unlisted transport; name"):
            await _all_topics(bus)
        # Watching every topic: the failed listing is reported, not swallowed.
        from dotmac.events.metrics import ALL_TOPICS, LagSampler

        sampler = LagSampler(bus, all_topics=True)
        await sampler.refresh()
        assert sampler.topics() == []
        assert sampler.errors == {
            ALL_TOPICS: "UnsupportedOperationError: the unlisted transport cannot list topics"
        }


async def _run_cli(argv: list[str], out: io.StringIO) -> int:
    # main() runs its own event loop: keep it off this test's loop.
    return await asyncio.to_thread(main, argv, out)


async def _until(predicate: Callable[[list[str]], bool], get: Callable[[], Awaitable[list[str]]]) -> None:
    deadline = time.monotonic() + T
    while True:
        value = await get()
        if predicate(value):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last value {value!r}")
        await asyncio.sleep(0.05)
