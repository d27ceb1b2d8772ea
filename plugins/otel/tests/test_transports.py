"""One trace from publisher through a real broker into the handler: Redis and Kafka.

Each case runs when its plugin and its testing helpers are installed and a broker is
reachable (``$REDIS_URL`` / ``$KAFKA_BOOTSTRAP_SERVERS``, or one the helpers start on a
free port); otherwise it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.plugins import get_registry

RETRY_ONCE = ConsumerOptions(max_retries=2, backoff_base_ms=0, retry_policy="fixed", start_from="earliest")


def _helpers(transport: str) -> Any:
    module = f"dotmac_events_{transport}.testing"
    try:
        helpers = importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{module} is not installed ({exc}); install dotmac-events-{transport}[test]")
    if transport not in get_registry().transports:
        pytest.skip(f"the {transport} transport is not registered (plugin not loaded)")
    return helpers


@contextlib.contextmanager
def _kafka_url() -> Iterator[str]:
    helpers = _helpers("kafka")
    try:
        with helpers.kafka_bootstrap_servers() as servers:
            yield f"kafka://{servers}?num_partitions=2"
    except helpers.BrokerError as exc:
        pytest.skip(f"no Kafka-protocol broker could be started: {exc}")


@contextlib.contextmanager
def _redis_url() -> Iterator[str]:
    helpers = _helpers("redis")
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return
    if not helpers.redis_server_available():
        pytest.skip("redis-server is not installed and REDIS_URL is not set")
    try:
        server = helpers.RedisServer().start()
    except RuntimeError as exc:
        pytest.skip(f"redis-server could not be started: {exc}")
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="module", params=["redis", "kafka"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with (_kafka_url if request.param == "kafka" else _redis_url)() as url:
        yield url


async def test_trace_crosses_the_broker(broker_url, telemetry, new_topic, outcomes):
    topic = new_topic()
    calls = 0

    async def handle(event: Event) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first call fails")
        with telemetry.tracer.start_as_current_span("handler work"):
            pass

    async with create_bus(broker_url, observers=[telemetry.observer(), outcomes]) as bus:
        transport = bus.transport.name
        await bus.subscribe(topic, handle, group="billing", options=RETRY_ONCE)
        await bus.publish(Event(topic=topic, payload={"id": 7}, key="order-7", tenant_id="acme"))
        await outcomes.wait(1, topic, timeout=60)

    producer = telemetry.one(f"publish {topic}", SpanKind.PRODUCER)
    consumer = telemetry.one(f"process {topic}", SpanKind.CONSUMER)
    work = telemetry.one("handler work")
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert work.parent.span_id == consumer.context.span_id
    assert producer.attributes["messaging.system"] == consumer.attributes["messaging.system"] == transport
    assert consumer.attributes["messaging.consumer.group.name"] == "billing"
    assert consumer.attributes["dotmac.events.tenant_id"] == "acme"
    assert consumer.attributes["dotmac.events.position"]
    assert [e.name for e in consumer.events] == ["dotmac.events.retry"]
    assert consumer.status.status_code is StatusCode.UNSET
    # The broker the bus was given, on both sides (the first bootstrap server on Kafka).
    netloc = broker_url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split(",", 1)[0]
    host, _, port = netloc.rpartition("@")[2].rpartition(":")
    for span in (producer, consumer):
        assert span.attributes["server.address"] == host
        assert span.attributes["server.port"] == int(port)
    if transport == "kafka":
        assert producer.attributes["messaging.kafka.message.key"] == "order-7"
        assert consumer.attributes["messaging.kafka.message.key"] == "order-7"
        partition, offset = consumer.attributes["dotmac.events.position"].split(":")
        assert consumer.attributes["messaging.destination.partition.id"] == partition
        assert consumer.attributes["messaging.kafka.offset"] == int(offset)


async def test_request_reply_is_one_trace_across_the_broker(broker_url, telemetry, new_topic):
    topic = new_topic()
    async with create_bus(broker_url, observers=[telemetry.observer()]) as server:
        if not server.capabilities.request_reply:
            pytest.skip(f"{server.transport.name} has no request-reply")
        await server.subscribe(topic, lambda e: {"ok": True}, group="rpc", options=RETRY_ONCE)
        async with create_bus(broker_url, observers=[telemetry.observer()]) as client:
            with telemetry.tracer.start_as_current_span("caller") as root:
                reply = await asyncio.wait_for(client.request(Event(topic=topic, payload={}), timeout=30), 60)
    assert reply.payload == {"ok": True}
    trace_id = root.get_span_context().trace_id
    request_proc = telemetry.one(f"process {topic}")
    reply_pub = telemetry.one("publish dotmac.reply.{bus}")
    reply_proc = telemetry.one("process dotmac.reply.{bus}")
    assert {request_proc.context.trace_id, reply_pub.context.trace_id, reply_proc.context.trace_id} == {
        trace_id
    }
    assert reply_pub.parent.span_id == request_proc.context.span_id
    assert reply_proc.parent.span_id == reply_pub.context.span_id
