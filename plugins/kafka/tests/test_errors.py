"""Fatal broker answers fail the call that met them, naming the setting or permission.

On a real broker where one here can produce the answer (noida-db enforces Kafka's
group limits and per-topic max.message.bytes; Tansu does neither); the others are unit
tests of the classification, because no broker here has ACLs or refuses topic
auto-creation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import errors as kerr

from dotmac.events import (
    AuthenticationError,
    ConfigurationError,
    ConsumerOptions,
    Event,
    EventBus,
    TransportError,
)
from dotmac.events.testing import wait_for
from dotmac_events_kafka.errors import classify, is_fatal, unknown_topic

MakeBus = Callable[..., EventBus]


async def test_session_timeout_below_the_broker_minimum_fails_subscribe_at_once(
    make_bus: MakeBus, kafka_kind: str, topic: str, group: str
) -> None:
    if kafka_kind != "noida":
        pytest.skip("only noida-db (like Apache Kafka) enforces group.min.session.timeout.ms here")
    async with make_bus(session_timeout_ms=2000, heartbeat_interval_ms=200, join_timeout_ms=30_000) as bus:
        started = time.monotonic()
        with pytest.raises(ConfigurationError) as info:
            await bus.subscribe(topic, lambda event: None, group=group)
        elapsed = time.monotonic() - started
    assert info.value.setting == "session_timeout_ms"
    assert "session_timeout_ms=2000" in str(info.value)
    assert "group.min.session.timeout.ms" in str(info.value)
    # Before this classification the call waited out join_timeout_ms (30 s here).
    assert elapsed < 10, elapsed


async def test_record_above_the_topic_limit_fails_publish_naming_the_limit(
    make_bus: MakeBus, kafka_kind: str, topic: str
) -> None:
    if kafka_kind != "noida":
        pytest.skip("Tansu does not enforce a topic's max.message.bytes")
    async with make_bus(topic_config={"max.message.bytes": "2000"}) as bus:
        await bus.publish(Event(topic=topic, payload={"small": 1}))
        with pytest.raises(ConfigurationError) as info:
            await bus.publish(Event(topic=topic, payload={"blob": "x" * 5000}))
    assert info.value.setting == "max_request_size"
    assert "2000 bytes" in str(info.value), str(info.value)


async def test_record_above_our_max_request_size_names_it(make_bus: MakeBus, topic: str) -> None:
    async with make_bus(max_request_size=3000) as bus:
        with pytest.raises(ConfigurationError) as info:
            await bus.publish(Event(topic=topic, payload={"blob": "x" * 5000}))
    assert "max_request_size=3000" in str(info.value)


async def test_transactional_publish_many_is_all_or_nothing(
    make_bus: MakeBus, kafka_kind: str, topic: str
) -> None:
    if kafka_kind == "tansu":
        pytest.skip("Tansu has no transactions (see the test below)")
    tx = f"tx-{uuid.uuid4().hex[:8]}"
    # One partition: the aborted record lies between the batches in the log, so once
    # the last event arrived, an aborted record that leaked would have arrived before it.
    async with make_bus(
        transactional_id=tx, isolation_level="read_committed", max_request_size=3000, num_partitions=1
    ) as bus:
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(5)])
        with pytest.raises(ConfigurationError):
            # One record too large for our limit aborts the whole batch.
            await bus.publish_many(
                [Event(topic=topic, payload={"i": 5}), Event(topic=topic, payload={"blob": "x" * 5000})]
            )
        await bus.publish_many([Event(topic=topic, payload={"i": 6})])
        got: list[int] = []

        async def handle(event: Event) -> None:
            got.append(event.payload["i"])

        await bus.subscribe(topic, handle, options=ConsumerOptions(start_from="earliest"))
        await wait_for(lambda: 6 in got, 20, what="the batch after the aborted one")
    assert got == [0, 1, 2, 3, 4, 6], got


async def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    make_bus: MakeBus, kafka_kind: str, topic: str
) -> None:
    if kafka_kind != "noida":
        pytest.skip("needs a broker with transactions")
    tx = f"tx-{uuid.uuid4().hex[:8]}"
    async with make_bus(transactional_id=tx) as first:
        await first.publish(Event(topic=topic, payload={"i": 0}))
        async with make_bus(transactional_id=tx) as second:
            await second.publish(Event(topic=topic, payload={"i": 1}))
            with pytest.raises(ConfigurationError) as info:
                await first.publish(Event(topic=topic, payload={"i": 2}))
    assert info.value.setting == "transactional_id", info.value


async def test_idempotent_producer_is_on_where_the_broker_allows_it(
    make_bus: MakeBus, kafka_kind: str
) -> None:
    async with make_bus() as bus:
        idempotent = bus.transport.describe()["idempotence"]
    assert idempotent is (kafka_kind != "tansu")


async def test_transactional_id_on_tansu_is_a_configuration_error(make_bus: MakeBus, kafka_kind: str) -> None:
    if kafka_kind != "tansu":
        pytest.skip("Tansu refuses transactional producers; noida-db runs them")
    bus = make_bus(transactional_id="tx-refused", request_timeout_ms=3000)
    with pytest.raises((ConfigurationError, TransportError)) as info:
        await bus.start()
    await bus.close()
    assert "transactional_id" in str(info.value)


# -- classification without a broker -----------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "kind", "needle"),
    [
        (kerr.GroupAuthorizationFailedError("g"), AuthenticationError, "READ on group 'billing'"),
        (kerr.TopicAuthorizationFailedError(), AuthenticationError, "on topic 'orders'"),
        (kerr.ClusterAuthorizationFailedError(), AuthenticationError, "IDEMPOTENT_WRITE"),
        (kerr.SaslAuthenticationFailed(), AuthenticationError, "sasl_password"),
        (kerr.UnsupportedSaslMechanismError(), AuthenticationError, "sasl_mechanism"),
        (kerr.InvalidSessionTimeoutError(), ConfigurationError, "6000..300000 ms"),
        (kerr.MessageSizeTooLargeError(), ConfigurationError, "at most 1000 bytes"),
        (kerr.InvalidTransactionTimeout(), ConfigurationError, "transaction.max.timeout.ms"),
        (kerr.ProducerFenced(), ConfigurationError, "same transactional_id"),
    ],
)
def test_classification(exc: BaseException, kind: type[Exception], needle: str) -> None:
    error = classify(
        exc,
        what="doing it",
        session_timeout_ms=2000,
        group="billing",
        topics=["orders"],
        username="svc",
        broker_limits={
            "group.min.session.timeout.ms": "6000",
            "group.max.session.timeout.ms": "300000",
            "max.message.bytes": "1000",
        },
    )
    assert isinstance(error, kind), error
    assert needle in str(error), str(error)
    assert is_fatal(exc)


@pytest.mark.parametrize(
    "exc", [kerr.NotLeaderForPartitionError(), kerr.RequestTimedOutError(), kerr.KafkaConnectionError()]
)
def test_transient_errors_are_not_classified(exc: BaseException) -> None:
    assert classify(exc, what="x") is None
    assert not is_fatal(exc)


def test_unknown_topic_names_the_setting() -> None:
    error = unknown_topic("publish", ["orders"])
    assert error.setting == "auto_create_topics" and "'orders'" in str(error)
