"""``dotmac-events groups`` and the page's groups on NATS JetStream and RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from dotmac.events import Event, create_bus
from dotmac.events.cli import main
from dotmac.events.testing import Collector
from dotmac_events_nats.testing import NatsUnavailableError, delete_stream, nats_url_for_tests
from dotmac_events_ops import OpsServer
from dotmac_events_rabbitmq.testing import url_fixture

T = 15.0

rabbitmq_url = url_fixture("module")


@pytest.fixture
def nats_url() -> Iterator[str]:
    """A URL on a stream and subject prefix of this test's own, deleted afterwards."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(nats_url_for_tests())
        except NatsUnavailableError as exc:
            pytest.skip(str(exc))
        tag = uuid.uuid4().hex[:10]
        yield f"{server}?stream=ops_{tag}&subject_prefix=o{tag}"
        asyncio.run(delete_stream(server, f"ops_{tag}"))


async def _backlog(url: str, topic: str, n: int) -> None:
    """A group 'billing' that handled one event, then ``n`` more it has not been handed."""
    async with create_bus(url) as bus:
        seen = Collector()
        sub = await bus.subscribe(topic, seen, group="billing")
        await bus.publish(Event(topic=topic, payload={}))
        await seen.wait_count(1, T)
        await sub.stop()
        await bus.publish_many([Event(topic=topic, payload={}) for _ in range(n)])


async def _run_cli(argv: list[str], out: io.StringIO) -> int:
    # main() runs its own event loop: keep it off this test's loop.
    return await asyncio.to_thread(main, argv, out)


async def test_nats_groups_command_and_page(
    nats_url: str, topic: str, registry: CollectorRegistry, http: httpx.AsyncClient
) -> None:
    await _backlog(nats_url, topic, 4)
    out = io.StringIO()
    # Topics are listed on NATS: no --topic needed.
    assert await _run_cli(["groups", "--url", nats_url, "--json"], out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["topic"], r["group"], r["lag"], r["pending"], r["member_count"]) for r in records] == [
        (topic, "billing", 4, 0, None)
    ]
    async with create_bus(nats_url) as bus:
        async with OpsServer(bus, port=0, registry=registry, all_topics=True) as ops:
            body = (await http.get(f"{ops.url}/api/groups")).json()
            assert [(g["topic"], g["group"], g["lag"]) for g in body["groups"]] == [(topic, "billing", 4)]
            assert 'data-group="billing"' in (await http.get(f"{ops.url}/")).text


async def test_rabbitmq_groups_command_and_page(
    rabbitmq_url: str, topic: str, registry: CollectorRegistry, http: httpx.AsyncClient
) -> None:
    await _backlog(rabbitmq_url, topic, 4)
    out = io.StringIO()
    assert await _run_cli(["groups", "--url", rabbitmq_url, "--topic", topic, "--json"], out) == 0
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (record["group"], record["lag"], record["pending"], record["member_count"]) == (
        "billing",
        4,
        None,
        0,
    )
    out = io.StringIO()
    assert await _run_cli(["groups", "--url", rabbitmq_url, "--topic", topic], out) == 0
    _header, row = out.getvalue().splitlines()
    assert row.split() == [topic, "billing", "4", "-", "-", "-"]
    # Without --topic the command says how to go on (AMQP cannot list topics).
    assert await _run_cli(["groups", "--url", rabbitmq_url], io.StringIO()) == 2
    async with create_bus(rabbitmq_url) as bus:
        await bus.subscribe(topic, Collector(), group="billing")
        async with OpsServer(bus, port=0, registry=registry, topics=[topic]) as ops:
            body = (await http.get(f"{ops.url}/api/groups")).json()
            (group,) = body["groups"]
            assert (group["group"], group["member_count"], group["pending"]) == ("billing", 1, None)
            page = (await http.get(f"{ops.url}/")).text
            assert "1 unnamed" in page
