"""Consumer-group introspection (``bus.groups``) against a real Kafka-protocol broker."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from dotmac.events import Event, EventBus
from dotmac.events.testing import Collector, wait_groups

MakeBus = Callable[..., EventBus]
T = 20.0


async def test_members_are_the_brokers_member_ids(make_bus: MakeBus, topic: str, group: str) -> None:
    """What the kit's lag case leaves to the broker: the one member of a group is
    listed, by the id the broker gave it."""
    async with make_bus() as bus:
        seen = Collector()
        await bus.subscribe(topic, seen, group=group)
        await bus.publish(Event(topic=topic, payload={"i": 0}))
        await seen.wait_count(1, T)
        (info,) = await wait_groups(bus, topic, lambda g: len(g) == 1 and g[0].lag == 0, T, what="commits")
        (member,) = info.members
        assert member


async def test_a_topic_no_group_consumed_has_no_groups(make_bus: MakeBus, topic: str) -> None:
    async with make_bus() as bus:
        await bus.publish(Event(topic=topic, payload={}))  # the topic exists, no group committed
        assert await bus.groups(topic) == []


async def test_a_partition_without_commit_makes_lag_unknown(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str
) -> None:
    async with make_bus(num_partitions=2) as bus:
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(4)])
        raw = AIOKafkaConsumer(bootstrap_servers=kafka_servers, group_id=group, enable_auto_commit=False)
        await raw.start()
        raw.assign([TopicPartition(topic, 0)])
        try:
            await raw.commit({TopicPartition(topic, 0): OffsetAndMetadata(0, "")})
        finally:
            await raw.stop()
        (info,) = await bus.groups(topic)
        # Where the group starts on partition 1 depends on its reset policy: no guess.
        assert (info.group, info.lag) == (group, None)


def test_member_assignments_name_their_topics() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    from dotmac_events_kafka.groups import _assigned_topics

    encoded = ConsumerProtocolMemberAssignment(0, [("orders", [0, 2]), ("refunds", [1])], b"").encode()
    assert _assigned_topics(encoded) == {"orders", "refunds"}
    assert _assigned_topics(b"") is None  # a broker that sends no assignment
    assert _assigned_topics(b"\x00") is None  # one of another protocol


async def test_topics_lists_the_brokers_topics_without_internal_ones(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str
) -> None:
    async with make_bus() as bus:
        assert bus.capabilities.introspection
        seen = Collector()
        await bus.subscribe(f"{topic}.b", seen, group=group)
        await bus.publish_many([Event(topic=t, payload={}) for t in (topic, f"{topic}.dlq", f"{topic}.b")])
        await seen.wait_count(1, T)
        # These brokers keep offsets and transactions out of topics, so no
        # "__consumer_offsets" shows: an internal-looking topic stands in for one.
        internal = f"__{topic}"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(internal, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        listed = await bus.topics()
        # The broker is shared by the session's tests: look at this test's topics.
        assert [t for t in listed if t.startswith(topic)] == [topic, f"{topic}.b", f"{topic}.dlq"]
        assert not [t for t in listed if t.startswith("__")]
        raw = AIOKafkaConsumer(bootstrap_servers=kafka_servers)
        await raw.start()
        try:
            everything = await raw.topics()
        finally:
            await raw.stop()
        assert internal in everything
        assert set(listed) == {t for t in everything if not t.startswith("__")}
