"""Behaviour of the NATS transport against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest

from dotmac.events import (
    ConsumerOptions,
    Delivery,
    Event,
    HeaderValidationError,
    InvalidTopicError,
    Message,
    MessageTooLargeError,
    SubscriptionSpec,
    TransportError,
    TransportUnavailableError,
    create_bus,
)
from dotmac.events.testing import Collector, wait_for
from dotmac_events_nats import KEY_HEADER, NatsConfig, NatsTransport
from dotmac_events_nats.testing import NatsServer, free_port

T = 15.0  # seconds to wait for anything that should happen promptly

BusUrl = Callable[..., str]


def topic() -> str:
    return f"t.{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def raw_transport(url: str) -> AsyncIterator[NatsTransport]:
    """A started transport of its own (no bus around it), closed afterwards."""
    bus = create_bus(url)
    assert isinstance(bus.transport, NatsTransport)
    await bus.transport.start()
    try:
        yield bus.transport
    finally:
        await bus.transport.close()


async def test_events_are_readable_by_a_plain_client(bus_url: BusUrl, nats_url: str) -> None:
    name = topic()
    url = bus_url()
    prefix = url.split("subject_prefix=")[1].split("&")[0]
    nc = await nats.connect(nats_url)
    try:
        raw = await nc.subscribe(f"{prefix}.{name}")
        async with create_bus(url) as bus:
            await bus.publish(
                Event(
                    topic=name, payload={"id": 7}, key="order-7", headers={"x-user": "u1"}, tenant_id="acme"
                )
            )
            msg = await raw.next_msg(timeout=T)
    finally:
        await nc.close()
    assert json.loads(msg.data) == {"id": 7}
    assert msg.headers is not None
    assert msg.headers[KEY_HEADER] == "order-7"
    assert msg.headers["x-user"] == "u1"
    assert msg.headers["ce_tenantid"] == "acme"
    assert msg.headers["content-type"] == "application/json"
    assert msg.headers["ce_specversion"] == "1.0"


@pytest.mark.parametrize("bad", ["a..b", ".a", "a.", "orders..created"])
async def test_topics_nats_cannot_carry_are_refused_before_sending(bus_url: BusUrl, bad: str) -> None:
    async with create_bus(bus_url()) as bus:
        with pytest.raises(InvalidTopicError, match="NATS subject"):
            await bus.publish(Event(topic=bad, payload={}))
        with pytest.raises(InvalidTopicError):
            await bus.publish_many([Event(topic=topic(), payload={}), Event(topic=bad, payload={})])
        with pytest.raises(InvalidTopicError):
            await bus.subscribe(bad, Collector())
        stream = await bus.transport.jetstream.stream_info(bus_url.stream)  # type: ignore[attr-defined]
        assert stream.state.messages == 0, "nothing may be stored when a batch is refused"


async def test_header_values_and_keys_come_back_verbatim(bus_url: BusUrl) -> None:
    name = topic()
    headers = {
        "x-empty": "",
        "x-spaces": "  padded both sides  ",
        "x-tab": "\tlead",
        "x-nbsp": "\u00a0nbsp\u00a0",
        "x-unicode": "café ☕ 日本語",
        "x-long": "v" * 4000,
        "x-looks-encoded": "=?utf-8?b?aGk=?=",
        "X-Mixed-Case": "Case",
    }
    seen = Collector()
    async with create_bus(bus_url()) as consumer, create_bus(bus_url()) as producer:
        await consumer.subscribe(name, seen)
        for key in ("plain", " spaced key ", "clé-日本"):
            await producer.publish(Event(topic=name, payload={"k": key}, key=key, headers=headers))
        await seen.wait_count(3, T)
        letters = await producer.transport.read(name, limit=10)
    for event in seen.events:
        assert event.key == event.payload["k"]
        assert dict(event.headers) == headers
    assert [m.key for m in letters] == ["plain", " spaced key ", "clé-日本"]
    for message in letters:
        user = {k: v for k, v in message.headers.items() if not k.startswith("ce_") and k != "content-type"}
        assert user == headers


async def test_headers_the_server_or_a_client_adds_do_not_leak(bus_url: BusUrl, nats_url: str) -> None:
    name = topic()
    url = bus_url()
    prefix = url.split("subject_prefix=")[1].split("&")[0]
    seen = Collector()
    async with create_bus(url) as bus:
        await bus.subscribe(name, seen)
        nc = await nats.connect(nats_url)
        try:
            # A plain JetStream client: Nats-Msg-Id and Nats-Expected-Stream are its own.
            await nc.jetstream().publish(
                f"{prefix}.{name}",
                b'{"i": 1}',
                stream=bus_url.stream,  # type: ignore[attr-defined]
                headers={
                    "Nats-Msg-Id": "m-1",
                    "ce_id": "plain-1",
                    "ce_specversion": "1.0",
                    "content-type": "application/json",
                    "x-app": "a",
                },
            )
        finally:
            await nc.close()
        await seen.wait_count(1, T)
    assert seen.events[0].event_id == "plain-1"
    assert dict(seen.events[0].headers) == {"x-app": "a"}


async def test_user_headers_named_like_nats_headers_are_refused_before_sending(bus_url: BusUrl) -> None:
    async with create_bus(bus_url()) as bus:
        with pytest.raises(HeaderValidationError, match="reserved by NATS"):
            await bus.publish(Event(topic=topic(), payload={}, headers={"Nats-Msg-Id": "x"}))
        stream = await bus.transport.jetstream.stream_info(bus_url.stream)  # type: ignore[attr-defined]
        assert stream.state.messages == 0


async def test_delivery_count_comes_from_the_server(bus_url: BusUrl) -> None:
    """A released event comes back with the server's count, promptly (NAK, not ack_wait)."""
    name = topic()
    url = bus_url(ack_wait=30)
    async with create_bus(url) as producer:
        await producer.publish(Event(topic=name, payload={"i": 1}))
        async with raw_transport(url) as t:
            counts: list[int] = []
            got = asyncio.Queue[Delivery]()

            async def sink(delivery: Delivery) -> None:
                counts.append(delivery.delivery_count)
                await got.put(delivery)

            spec = SubscriptionSpec(topics=(name,), group="g", consumer_name="c1", start_from="earliest")
            sub = await t.subscribe(spec, sink)
            started = time.monotonic()
            for _ in range(3):
                delivery = await asyncio.wait_for(got.get(), T)
                await delivery.release()
            delivery = await asyncio.wait_for(got.get(), T)
            elapsed = time.monotonic() - started
            await delivery.ack()
            await sub.stop()
    assert counts == [1, 2, 3, 4]
    assert elapsed < 5, f"released events must come back at once, took {elapsed:.1f}s"


async def test_max_deliveries_dead_letters_on_the_server_count(bus_url: BusUrl) -> None:
    """Deliveries that never finish (the process dies each time) reach the DLQ by count."""
    name = topic()
    url = bus_url(max_deliver=2)
    async with create_bus(url) as producer:
        event = Event(topic=name, payload={"i": 1})
        await producer.publish(event)
        # Two deliveries that are released without an attempt finishing, as a crash would.
        async with raw_transport(url) as t:
            got = asyncio.Queue[Delivery]()
            spec = SubscriptionSpec(topics=(name,), group="g", consumer_name="c1", start_from="earliest")
            sub = await t.subscribe(spec, got.put)
            for _ in range(2):
                await (await asyncio.wait_for(got.get(), T)).release()
            await sub.stop()
        dead = Collector()
        handled = Collector()
        await producer.subscribe(f"{name}.dlq", dead, options=ConsumerOptions(start_from="earliest"))
        await producer.subscribe(name, handled, group="g")
        await dead.wait_count(1, T)
    assert dead.events[0].event_id == event.event_id
    assert dead.events[0].headers["x-dlq-reason"] == "max_deliveries"
    assert handled.events == []


async def test_keep_alive_holds_events_past_ack_wait(bus_url: BusUrl) -> None:
    """Retry backoff longer than ack_wait: the server must not redeliver meanwhile."""
    name = topic()
    url = bus_url(ack_wait=1)
    calls: list[float] = []

    async def flaky(event: Event) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    async with create_bus(url) as consumer, create_bus(url) as other, create_bus(url) as producer:
        # Two members: a redelivery after ack_wait would show up at either.
        # Either member may take the event: both retry after the same 3 s backoff.
        options = ConsumerOptions(max_retries=1, backoff_base_ms=3000, retry_policy="fixed")
        subs = [await bus.subscribe(name, flaky, group="g", options=options) for bus in (consumer, other)]
        await producer.publish(Event(topic=name, payload={"i": 1}))
        await wait_for(lambda: sum(s.handled for s in subs) == 1, T, what="the retried event to be handled")
        await asyncio.sleep(1.5)  # past one more ack_wait: a redelivery would be a third call
    assert len(calls) == 2, f"handler calls: {len(calls)} (a redelivery happened during backoff)"
    assert calls[1] - calls[0] >= 2.9


async def test_prefetch_is_honoured_and_the_sink_blocks(bus_url: BusUrl) -> None:
    name = topic()
    url = bus_url()
    async with create_bus(url) as producer:
        await producer.publish_many([Event(topic=name, payload={"i": i}) for i in range(40)])
        async with raw_transport(url) as t:
            held: list[Delivery] = []
            most = 0
            room = asyncio.Event()

            async def sink(delivery: Delivery) -> None:
                nonlocal most
                held.append(delivery)
                most = max(most, len(held))
                if len(held) >= 5:
                    room.clear()
                    await room.wait()

            spec = SubscriptionSpec(
                topics=(name,), group="g", consumer_name="c", prefetch=5, start_from="earliest"
            )
            sub = await t.subscribe(spec, sink)
            acked = 0
            while acked < 40:
                await wait_for(lambda: len(held) >= min(5, 40 - acked), T, what="a full window")
                assert sum(1 for p in sub.pullers for _ in p.buffer) + len(held) <= 5 + 1
                batch, held[:] = list(held), []
                for delivery in batch:
                    await delivery.ack()
                acked += len(batch)
                room.set()
            await sub.stop()
    assert most == 5


async def test_start_from_latest_and_earliest(bus_url: BusUrl) -> None:
    name = topic()
    async with create_bus(bus_url()) as bus:
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
        latest, earliest, broadcast = Collector(), Collector(), Collector()
        await bus.subscribe(name, latest, group="new")
        await bus.subscribe(name, earliest, group="old", options=ConsumerOptions(start_from="earliest"))
        await bus.subscribe(name, broadcast)
        await bus.publish(Event(topic=name, payload={"i": 3}))
        await earliest.wait_count(4, T)
        await latest.wait_count(1, T)
        await broadcast.wait_count(1, T)
        await asyncio.sleep(0.5)  # nothing else may arrive
    assert sorted(earliest.payloads("i")) == [0, 1, 2, 3]
    assert latest.payloads("i") == [3]
    assert broadcast.payloads("i") == [3]


async def test_an_idle_subscription_receives_after_many_pull_expiries(bus_url: BusUrl) -> None:
    name = topic()
    seen = Collector()
    async with create_bus(bus_url(pull_expires=0.2)) as bus:
        await bus.subscribe(name, seen, group="g")
        await bus.subscribe(name, seen)
        await asyncio.sleep(2.0)  # ten expired pull requests on each consumer
        await bus.publish(Event(topic=name, payload={"i": 1}))
        await seen.wait_count(2, T)


async def test_a_group_outlives_its_members(bus_url: BusUrl) -> None:
    name = topic()
    url = bus_url()
    async with create_bus(url) as producer:
        async with create_bus(url) as first:
            await first.subscribe(name, Collector(), group="g")
        await producer.publish_many([Event(topic=name, payload={"i": i}) for i in range(5)])
        seen = Collector()
        async with create_bus(url) as second:
            await second.subscribe(name, seen, group="g")
            await seen.wait_count(5, T)
    assert sorted(seen.payloads("i")) == list(range(5))


async def test_broadcast_consumers_are_deleted_on_stop(bus_url: BusUrl) -> None:
    name = topic()
    async with create_bus(bus_url()) as bus:
        sub = await bus.subscribe(name, Collector())
        js = bus.transport.jetstream
        stream = bus_url.stream  # type: ignore[attr-defined]
        assert len(await js.consumers_info(stream)) == 1
        await sub.stop()
        assert await js.consumers_info(stream) == []


async def test_request_reply(bus_url: BusUrl) -> None:
    name = topic()
    async with create_bus(bus_url()) as server, create_bus(bus_url()) as client:
        await server.subscribe(name, lambda e: {"twice": e.payload["n"] * 2}, group="rpc")
        replies = await asyncio.gather(
            *(client.request(Event(topic=name, payload={"n": n}), timeout=T) for n in range(5))
        )
        js = client.transport.jetstream
        stream = bus_url.stream  # type: ignore[attr-defined]
        info = await js.stream_info(stream)
        consumers = await js.consumers_info(stream)
    assert [r.payload["twice"] for r in replies] == [0, 2, 4, 6, 8]
    # Replies travel on core NATS: only the 5 requests are stored, and the only
    # consumer is the responders' group.
    assert info.state.messages == 5
    assert len(consumers) == 1


async def test_unreachable_server_fails_start_with_a_retriable_error() -> None:
    bus = create_bus(f"nats://127.0.0.1:{free_port()}?connect_timeout=0.5")
    with pytest.raises(TransportUnavailableError) as info:
        await bus.start()
    assert info.value.retriable
    await bus.close()


async def test_a_server_without_jetstream_is_reported() -> None:
    server = NatsServer()
    server._args = lambda: [a for a in NatsServer._args(server) if a != "-js"]  # type: ignore[method-assign]
    with server:
        bus = create_bus(f"{server.url}?request_timeout=2")
        with pytest.raises(TransportUnavailableError, match="JetStream"):
            await bus.start()
        await bus.close()


async def test_credentials_work_and_never_show(bus_url: BusUrl) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex[:6]
    with NatsServer(user="app", password=secret) as server:
        ok = create_bus(f"nats://app:{secret}@127.0.0.1:{server.port}")
        async with ok:
            seen = Collector()
            await ok.subscribe("t.auth", seen)
            await ok.publish(Event(topic="t.auth", payload={"i": 1}))
            await seen.wait_count(1, T)
            assert secret not in repr(ok.transport)
            assert secret not in repr(ok.transport.config)  # type: ignore[attr-defined]
            assert secret not in str(ok.transport.describe())
        bad = create_bus(f"nats://app:wrong-{secret}@127.0.0.1:{server.port}?connect_timeout=1")
        with pytest.raises(TransportError, match="refused the credentials") as info:
            await bad.start()
        await bad.close()
        assert not info.value.retriable
        assert secret not in str(info.value)


def test_config_builds_from_a_config_object() -> None:
    config = NatsConfig(servers=["n1:4222", "nats://n2:4223"], stream="ORDERS")
    assert config.server_list == ["nats://n1:4222", "nats://n2:4223"]
    assert isinstance(create_bus(config).transport, NatsTransport)


def _unused(*_: Any) -> None:
    """Keeps the fixtures' type names in one place."""


@pytest.mark.parametrize("via", ["stop", "close"])
async def test_events_released_by_a_stopping_member_reach_another_at_once(bus_url: BusUrl, via: str) -> None:
    """NATS 2.9 hands a NAK'd message to a pull request nobody listens to any more, and
    it then waits out ack_wait. A stopping member keeps listening until its requests
    ended, so what the core releases after stop() goes straight to a live member."""
    name = topic()
    url = bus_url(ack_wait=60, pull_expires=1)
    gate = asyncio.Event()
    started = asyncio.Event()

    async def stuck(event: Event) -> None:
        started.set()
        await gate.wait()

    async with create_bus(url) as producer, create_bus(url) as survivor:
        doomed = create_bus(url)
        await doomed.start()
        sub = await doomed.subscribe(name, stuck, group="g", options=ConsumerOptions(prefetch_count=10))
        sent = [Event(topic=name, payload={"i": i}) for i in range(5)]
        await producer.publish_many(sent)
        await asyncio.wait_for(started.wait(), T)
        stopping = time.monotonic()
        if via == "stop":
            await sub.stop(timeout=0.1)
        else:
            await doomed.close(timeout=0.1)
        stop_took = time.monotonic() - stopping
        # The core released the events after the transport stopped. A member that
        # joins now must get them now.
        seen = Collector()
        released = time.monotonic()
        await survivor.subscribe(name, seen, group="g")
        await seen.wait_unique(5, T)
        took = time.monotonic() - released
        await doomed.close()
    assert set(seen.ids) == {e.event_id for e in sent}
    assert took < 3, f"released events took {took:.1f}s to reach the other member (ack_wait is 60s)"
    assert stop_took < 1 + 2.5, f"stop took {stop_took:.1f}s with pull_expires=1"


@pytest.mark.parametrize("group", ["g", None], ids=["group", "broadcast"])
async def test_a_consumer_deleted_under_a_live_subscription_is_created_again(
    bus_url: BusUrl, group: str | None
) -> None:
    name = topic()
    seen = Collector()
    async with create_bus(bus_url()) as bus:
        await bus.subscribe(name, seen, group=group)
        await bus.publish(Event(topic=name, payload={"i": 0}))
        await seen.wait_count(1, T)
        js = bus.transport.jetstream
        stream = bus_url.stream  # type: ignore[attr-defined]
        (info,) = await js.consumers_info(stream)
        await js.delete_consumer(stream, info.name)
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(1, 4)])
        await seen.wait_count(4, T)
    assert sorted(seen.payloads("i")) == [0, 1, 2, 3]


async def test_a_message_over_max_payload_is_refused_before_anything_is_sent(bus_url: BusUrl) -> None:
    name = topic()
    async with create_bus(bus_url()) as bus:
        t = bus.transport
        limit = t.connection.max_payload  # type: ignore[attr-defined]
        small = Message(topic=name, value=b"{}", headers={"ce_id": "1"})
        big = Message(topic=name, value=b"x" * limit, headers={"ce_id": "2"})
        with pytest.raises(MessageTooLargeError, match="max_payload"):
            await t.publish([small, big])
        await t.publish([small])  # the connection and the acknowledgement slots are fine
        stream = await t.jetstream.stream_info(bus_url.stream)  # type: ignore[attr-defined]
        assert stream.state.messages == 1


async def test_members_joining_a_new_group_at_once_share_it(bus_url: BusUrl) -> None:
    """Two members create the same group at the same moment, with different start_from."""
    name = topic()
    seen = Collector()
    async with create_bus(bus_url()) as a, create_bus(bus_url()) as b:
        await asyncio.gather(
            a.subscribe(name, seen, group="g", options=ConsumerOptions(start_from="earliest")),
            b.subscribe(name, seen, group="g", options=ConsumerOptions(start_from="latest")),
            *(
                bus.subscribe(name, seen, group="g", options=ConsumerOptions(start_from=start))
                for bus in (a, b)
                for start in ("latest", "earliest")
            ),
        )
        await a.publish_many([Event(topic=name, payload={"i": i}) for i in range(20)])
        await seen.wait_unique(20, T)
        await asyncio.sleep(0.3)
    assert sorted(seen.payloads("i")) == list(range(20)), "each event once within the group"


async def test_a_subscription_to_several_topics_serves_each(bus_url: BusUrl) -> None:
    busy, quiet = topic(), topic()
    seen = Collector()
    async with create_bus(bus_url()) as bus:
        await bus.publish_many([Event(topic=busy, payload={"i": i}) for i in range(300)])
        await bus.subscribe(
            [busy, quiet], seen, group="g", options=ConsumerOptions(prefetch_count=4, start_from="earliest")
        )
        await bus.publish(Event(topic=quiet, payload={"i": -1}))
        await wait_for(lambda: -1 in seen.payloads("i"), T, what="the quiet topic's event")
        position = seen.payloads("i").index(-1)
        await seen.wait_unique(301, T)
    assert position < 300, "the quiet topic waited for the whole backlog of the busy one"


async def test_tls_with_a_private_ca(tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("nats.test", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    with NatsServer(tls=(str(cert_file), str(key_file))) as server:
        good = create_bus(
            f"tls://127.0.0.1:{server.port}?tls_ca_file={ca_file}".replace("tls://", "nats://", 1)
        )
        assert good.transport.describe()["tls"] is True
        async with good:
            seen = Collector()
            await good.subscribe("t.tls", seen)
            await good.publish(Event(topic="t.tls", payload={"i": 1}))
            await seen.wait_count(1, T)
        # Without the CA the server's certificate is not trusted: a clear, final error.
        untrusted = create_bus(f"nats://127.0.0.1:{server.port}?tls_hostname=nats.test&connect_timeout=1")
        with pytest.raises(TransportError) as info:
            await untrusted.start()
        await untrusted.close()
        assert not info.value.retriable


@pytest.mark.parametrize("when", ["held", "released"])
async def test_a_recreated_consumer_starts_at_what_was_not_acked(bus_url: BusUrl, when: str) -> None:
    """Acks and NAKs sent to a deleted consumer are void: the new one must start early enough."""
    name = topic()
    url = bus_url()
    async with create_bus(url) as producer:
        await producer.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
        async with raw_transport(url) as t:
            got = asyncio.Queue[Delivery]()
            spec = SubscriptionSpec(topics=(name,), group="g", consumer_name="c", start_from="earliest")
            await t.subscribe(spec, got.put)
            first = [await asyncio.wait_for(got.get(), T) for _ in range(3)]
            await first[0].ack()
            await first[2].ack()
            stream = bus_url.stream  # type: ignore[attr-defined]
            (info,) = await t.jetstream.consumers_info(stream)
            if when == "released":
                await first[1].release()
            await t.jetstream.delete_consumer(stream, info.name)
            if when == "held":
                await asyncio.sleep(0.2)
                await first[1].release()
            again = await asyncio.wait_for(got.get(), T)
            assert again.message.position == first[1].message.position
            await again.ack()
