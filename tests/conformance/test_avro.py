"""The conformance kit with the Avro codec: memory always, Redis and Kafka when installed.

Every bus of a test encodes with one :class:`AvroCodec` on one in-process registry
(schemas for the kit's topics by pattern, and for the reply topics of
request-reply). On memory the whole kit runs; on Redis and Kafka the cases where
the codec matters (payloads, envelopes, dead letters, replay, replies), since the
delivery cases only prove the transport again.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from dotmac.events import Event, EventBus, create_bus
from dotmac.events.testing import Collector, TransportConformance

pytest.importorskip("dotmac_events_avro")

from dotmac_events_avro import AvroCodec, AvroValidationError, InMemorySchemaRegistry  # noqa: E402

EVENT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "ConformanceEvent",
    "namespace": "dotmac.events.conformance",
    "fields": [{"name": "i", "type": "long"}, {"name": "text", "type": "string"}],
}
# The kit's responders answer {"doubled": n} or {"ok": true}: a union of two records.
REPLY_SCHEMA: list[dict[str, Any]] = [
    {
        "type": "record",
        "name": "Doubled",
        "namespace": "dotmac.events.conformance",
        "fields": [{"name": "doubled", "type": "long"}],
    },
    {
        "type": "record",
        "name": "Ok",
        "namespace": "dotmac.events.conformance",
        "fields": [{"name": "ok", "type": "boolean"}],
    },
]

CODEC_CASES = (
    "test_live_on_return_new_group",
    "test_round_trip_preserves_everything",
    "test_bad_input_rejected_before_send",
    "test_publish_many_delivers_all",
    "test_poison_event_goes_to_dlq_with_headers",
    "test_undecodable_message_is_dead_lettered_and_consumer_continues",
    "test_dlq_list_and_replay",
    "test_per_key_ordering",
    "test_request_reply",
)

C = TypeVar("C", bound=type)


def codec_cases_only(cls: C) -> C:
    """Keep only :data:`CODEC_CASES` of the kit in ``cls`` (others are not collected)."""
    for name in dir(TransportConformance):
        if name.startswith("test_") and name not in CODEC_CASES:
            setattr(cls, name, None)
    return cls


class AvroBuses:
    """Mixin: buses on ``self.make_bus(codec=...)`` sharing one Avro codec per test."""

    make_bus: Callable[..., EventBus]

    @pytest.fixture(autouse=True)
    def _avro_codec(self) -> None:
        self.codec = AvroCodec(
            schemas={"conformance.*": EVENT_SCHEMA, "dotmac.reply.*": REPLY_SCHEMA},
            registry=InMemorySchemaRegistry(),
        )

    def create_bus(self) -> EventBus:
        return self.make_bus(codec=self.codec)

    def test_events_travel_as_avro(self) -> None:
        """The kit's payloads really went through the Avro codec and its schema."""
        assert isinstance(self, TransportConformance)
        kit = self

        async def scenario() -> None:
            async with kit.buses(2) as (consumer, producer):
                topic = kit.topic("avro")
                seen = Collector()
                await consumer.subscribe(topic, seen)
                with pytest.raises(AvroValidationError):
                    await producer.publish(Event(topic=topic, payload={"i": "one", "text": "t"}))
                await producer.publish(kit.event(topic, 1))
                await seen.wait_count(1, kit.timeout)
                assert seen.events[0].metadata.content_type == "application/avro"
                assert seen.payloads("i") == [1]

        kit.run(scenario)


def test_every_codec_case_exists() -> None:
    missing = [name for name in CODEC_CASES if not callable(getattr(TransportConformance, name, None))]
    assert missing == []


# -- memory -----------------------------------------------------------------------------------


class TestAvroOnMemory(AvroBuses, TransportConformance):
    timeout = 10.0

    @pytest.fixture(autouse=True)
    def _broker(self) -> None:
        pytest.importorskip("dotmac_events_memory")
        url = f"memory://avro-conformance-{uuid.uuid4().hex[:8]}"
        self.make_bus = lambda **kwargs: create_bus(url, **kwargs)


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    pytest.importorskip("dotmac_events_redis")
    from dotmac_events_redis.testing import RedisServer, redis_server_available

    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if not redis_server_available():
        pytest.skip("redis-server is not installed and REDIS_URL is not set")
    with RedisServer() as server:
        yield server.url


@codec_cases_only
class TestAvroOnRedis(AvroBuses, TransportConformance):
    timeout = 20.0

    @pytest.fixture(autouse=True)
    def _broker(self, redis_url: str) -> None:
        url = f"{redis_url}?key_prefix=avro-conformance:{uuid.uuid4().hex[:8]}:"
        self.make_bus = lambda **kwargs: create_bus(url, **kwargs)


# -- Kafka ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kafka_servers() -> Iterator[str]:
    pytest.importorskip("dotmac_events_kafka")
    pytest.importorskip("aiokafka")
    from dotmac_events_kafka.testing import kafka_bootstrap_servers

    with kafka_bootstrap_servers() as servers:
        yield servers


@codec_cases_only
class TestAvroOnKafka(AvroBuses, TransportConformance):
    timeout = 30.0
    group_members = 3

    @pytest.fixture(autouse=True)
    def _broker(self, kafka_servers: str) -> None:
        from dotmac_events_kafka import create_kafka_bus
        from dotmac_events_kafka.testing import fast_config

        config = fast_config(kafka_servers)
        self.make_bus = lambda **kwargs: create_kafka_bus(config, **kwargs)
