"""Redis Cluster: URLs and key layout, and a local 3-primary/3-replica cluster with a
primary killed (``kill -9``) while events are published and consumed.

The failover tests report their figures (see ``test_faults.py``): events confirmed
to the publisher and never handled count as lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.errors import ConfigurationError, EventBusError, PublishError, TransportUnavailableError
from dotmac.events.testing import Collector, wait_for
from dotmac_events_redis import RedisConfig, RedisTransport
from dotmac_events_redis.errors import is_retriable, transport_error
from dotmac_events_redis.testing import RedisClusterServers, RedisServer, redis_cli, redis_server_available

T = 20.0


# -- configuration (no server) -----------------------------------------------------------
def test_cluster_url_takes_several_seed_nodes() -> None:
    url = "rediss+cluster://svc:secret@a.example:7000,b.example:7001,[::1]:7002/?wait_replicas=1"
    transport = create_bus(url).transport
    assert isinstance(transport, RedisTransport)
    config = transport.config
    assert (config.cluster, config.ssl, config.host, config.port) == (True, True, "a.example", 7000)
    assert config.seeds() == [("a.example", 7000), ("b.example", 7001), ("::1", 7002)]
    assert (config.username, config.password, config.wait_replicas) == ("svc", "secret", 1)
    assert "secret" not in repr(config)


def test_cluster_option_on_a_redis_url() -> None:
    bus = create_bus("redis://127.0.0.1:7000/?cluster=true&key_prefix=app:")
    transport = bus.transport
    assert isinstance(transport, RedisTransport)
    assert transport.config.cluster
    assert transport.config.seeds() == [("127.0.0.1", 7000)]


def test_cluster_stream_keys_are_one_hash_tag_each() -> None:
    single = RedisConfig(key_prefix="app:", namespace="eu")
    cluster = RedisConfig(key_prefix="app:", namespace="eu", cluster=True)
    assert single.stream_key("orders") == "app:eu:orders"  # single-node keys unchanged
    assert cluster.stream_key("orders") == "{app:eu:orders}"
    assert cluster.stream_key("orders.dlq") == "{app:eu:orders.dlq}"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://a:1,b:2/", "redis+cluster://"),
        ("redis+cluster://a:1/3", "db must be 0"),
        ("redis+cluster://a:1/?key_prefix={app}:", "key_prefix cannot contain"),
        ("redis://a:1/?cluster_seeds=b:2", "cluster is off"),
        ("redis+cluster://a:1/?cluster_seeds=b", "host:port"),
        ("redis+cluster://a:1/?wait_replicas=-1", "wait_replicas"),
    ],
)
def test_bad_cluster_settings_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("+", r"\+").replace("{", r"\{")):
        create_bus(url)


def test_encrypted_client_key_is_refused_in_cluster_mode() -> None:
    with pytest.raises(ConfigurationError, match="ssl_password is not supported"):
        RedisConfig(cluster=True, ssl=True, ssl_certfile="c.pem", ssl_password="pw")


@pytest.mark.parametrize(
    "error",
    [
        rexc.ResponseError("MOVED 3999 127.0.0.1:7001"),
        rexc.ResponseError("ASK 3999 127.0.0.1:7001"),
        rexc.ClusterDownError("The cluster is down"),
        rexc.TryAgainError("Multiple keys request during rehashing of slot"),
        rexc.SlotNotCoveredError("no node serves the slot"),
        rexc.ClusterError("TTL exhausted."),
        rexc.RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node"
        ),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(e)[:4],
)
def test_cluster_in_motion_is_retriable(error: Exception) -> None:
    assert is_retriable(error)
    assert isinstance(transport_error("publish failed", error), TransportUnavailableError)


def test_cross_slot_is_a_bug_not_an_outage() -> None:
    error = rexc.ResponseError("CROSSSLOT Keys in request don't hash to the same slot")
    assert not is_retriable(error)


# -- a local cluster ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    if not redis_server_available() or redis_cli() is None:
        pytest.skip("redis-server and redis-cli are needed for a local Redis Cluster")
    with RedisClusterServers(masters=3, replicas=1, node_timeout_ms=1000) as servers:
        yield servers


def _url(cluster: RedisClusterServers, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"key_prefix": f"t{uuid.uuid4().hex[:6]}:", **options}.items())
    return f"{cluster.url}?{query}"


async def test_topics_in_different_slots_in_one_subscription(cluster: RedisClusterServers) -> None:
    url = _url(cluster)
    topics = [f"orders.{i}" for i in range(6)]
    async with create_bus(url) as bus:
        transport = bus.transport
        assert isinstance(transport, RedisTransport)
        client = transport._redis()
        assert isinstance(client, RedisCluster)
        slots = {client.keyslot(transport.config.stream_key(t)) for t in topics}
        assert len(slots) > 1  # the case under test: a read cannot span them
        seen = Collector()
        await bus.subscribe(topics, seen, group="g")
        await bus.publish_many([Event(topic=t, payload={"i": i}) for i, t in enumerate(topics)])
        await seen.wait_unique(len(topics), T)
        groups = await bus.transport.groups(topics[0])
        assert [g.group for g in groups] == ["g"]


async def test_topics_lists_the_streams_of_every_primary(cluster: RedisClusterServers) -> None:
    url = _url(cluster)
    topics = sorted(f"orders.{i}" for i in range(6))
    async with create_bus(url) as bus:
        transport = bus.transport
        assert isinstance(transport, RedisTransport)
        client = transport._redis()
        assert isinstance(client, RedisCluster)
        nodes = {client.get_node_from_key(transport.config.stream_key(t)).name for t in topics}
        assert len(nodes) > 1  # the case under test: the streams live on several primaries
        await bus.publish_many([Event(topic=t, payload={}) for t in topics])
        assert await bus.topics() == topics


async def test_publish_with_wait_replicas_reports_replication(cluster: RedisClusterServers) -> None:
    async with create_bus(_url(cluster, wait_replicas=1)) as bus:
        await bus.publish(Event(topic="audit", payload={}))
    # More replicas than exist: the write is on the primary but unconfirmed.
    async with create_bus(_url(cluster, wait_replicas=2, wait_timeout_ms=50)) as bus:
        with pytest.raises(EventBusError, match="confirmed by 1 of wait_replicas=2") as info:
            await bus.publish(Event(topic="audit", payload={}))
        assert getattr(info.value, "retriable", None) is True


@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["WAIT 1", "no WAIT"])
async def test_kill_9_primary_while_publishing_and_consuming(
    cluster: RedisClusterServers, report: Any, wait_replicas: int
) -> None:
    # Every primary has its replica in sync (an earlier test's victim has rejoined).
    await asyncio.to_thread(cluster.wait_ok, 30.0)
    prefix, name = f"f{uuid.uuid4().hex[:6]}:", "failover"
    options = {
        "key_prefix": prefix,
        "wait_replicas": wait_replicas,
        "wait_timeout_ms": 500,
        "reconnect_backoff_max": 0.3,
    }
    url = cluster.url + "?" + "&".join(f"{k}={v}" for k, v in options.items())
    total, kill_at, workers = 3000, 1000, 8
    confirmed: list[str] = []
    failed: list[str] = []
    async with create_bus(url) as producer, create_bus(url) as consumer:
        seen = Collector()
        await consumer.subscribe(name, seen, group="g", options=ConsumerOptions(concurrency=4))
        queue: asyncio.Queue[Event] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(Event(topic=name, payload={"i": i}))

        async def publish() -> None:
            while not queue.empty():
                event = queue.get_nowait()
                try:
                    await producer.publish(event)
                except EventBusError:
                    failed.append(event.event_id)
                else:
                    confirmed.append(event.event_id)

        tasks = [asyncio.create_task(publish()) for _ in range(workers)]
        await wait_for(lambda: len(confirmed) >= kill_at, T, what=f"{kill_at} confirmed publishes")
        victim = cluster.primary_for(f"{{{prefix}{name}}}".encode())
        confirmed_before_kill = len(confirmed)
        killed = time.monotonic()
        victim.kill()
        await asyncio.to_thread(cluster.wait_ok, 30.0, replicas=0)
        promoted = time.monotonic()
        # The operator brings the node back: it rejoins as the new primary's replica, so
        # WAIT 1 can be satisfied again (until then such publishes fail, retriable).
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(cluster.wait_ok, 30.0)
        rejoined = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), 60.0)
        # Everything confirmed must be handled; wait for it, bounded.
        wanted = set(confirmed)
        try:
            await seen.wait(lambda c: wanted <= set(c.ids), 30.0, "every confirmed event handled")
        except AssertionError:
            pass
        handled = set(seen.ids)
        lost = len(wanted - handled)
        report(
            wait_replicas=wait_replicas,
            events=total,
            confirmed=len(confirmed),
            publish_failed=len(failed),
            confirmed_before_kill=confirmed_before_kill,
            promotion_seconds=round(promoted - killed, 2),
            rejoined_as_replica_seconds=round(rejoined - promoted, 2),
            handled_unique=len(handled),
            confirmed_and_lost=lost,
            duplicates=len(seen.ids) - len(handled),
        )
        assert len(confirmed) + len(failed) == total
        if wait_replicas:
            assert lost == 0


# -- WAIT on a single server -------------------------------------------------------------
async def test_wait_replicas_on_a_primary_with_and_without_a_replica(
    private_server: Callable[..., RedisServer],
) -> None:
    primary = private_server(extra_args=("--repl-diskless-sync-delay", "0"))
    name = "audit"
    async with create_bus(f"{primary.url}?wait_replicas=1&wait_timeout_ms=50") as bus:
        with pytest.raises(PublishError, match="confirmed by 0 of wait_replicas=1") as info:
            await bus.publish(Event(topic=name, payload={"n": 1}))
        assert info.value.retriable
        # Written to the primary all the same (the error says a retry may duplicate it).
        assert len(await bus.transport.read(name)) == 1
        replica = private_server(extra_args=("--replicaof", primary.host, str(primary.port)))
        await wait_for(
            lambda: b"master_link_status:up" in replica.call("INFO", "replication"), T, what="replica in sync"
        )
    # With a replica the acknowledgement comes; 50 ms is too short for it on a loaded
    # machine, so this publish waits up to T (the refusal above waited its 50 ms only).
    async with create_bus(f"{primary.url}?wait_replicas=1&wait_timeout_ms={int(T * 1000)}") as bus:
        await bus.publish(Event(topic=name, payload={"n": 2}))
        assert len(await bus.transport.read(name)) == 2
