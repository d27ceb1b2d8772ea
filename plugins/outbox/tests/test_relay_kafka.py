"""The relay to Kafka (a Tansu broker started for the test): every row, in key order."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from dotmac.events import Event, create_bus
from dotmac_events_outbox import Outbox, OutboxRelay

pytest.importorskip("dotmac_events_kafka")

Until = Callable[..., Awaitable[None]]


async def test_relay_to_kafka_delivers_every_row_in_key_order(
    conn: asyncpg.Connection[Any], table: str, pg_dsn: str, until: Until, report: Any
) -> None:
    from dotmac_events_kafka.testing import fast_config, kafka_bootstrap_servers

    outbox = Outbox(table=table)
    await outbox.install(conn)
    topic = f"outbox.kafka.{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[int]] = defaultdict(list)
    ids: list[str] = []

    def handle(event: Event) -> None:
        ids.append(event.event_id)
        seen[event.key or ""].append(event.payload["seq"])

    with kafka_bootstrap_servers() as servers:
        config = fast_config(servers)
        async with create_bus(config) as consumer:
            await consumer.subscribe(topic, handle, group=f"g-{uuid.uuid4().hex[:8]}")
            async with OutboxRelay(pg_dsn, config, table=table, batch_size=50):
                for tx in range(6):
                    async with conn.transaction():
                        await outbox.publish_many(
                            conn,
                            [
                                Event(topic=topic, payload={"seq": tx * 50 + i}, key=f"k{i % 5}")
                                for i in range(50)
                            ],
                        )
                await until(lambda: len(set(ids)) == 300, timeout=60, what="300 events from Kafka")
    report(published=300, received=len(ids), lost=300 - len(set(ids)), duplicates=len(ids) - len(set(ids)))
    for key, seqs in seen.items():
        assert seqs == sorted(seqs), key
