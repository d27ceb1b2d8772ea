"""The outbox relay and the delay scheduler run inside a service, under its lifespan
(what ``dotmac-events run module:app`` enters), next to its subscribers."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from dotmac.events import App, Event
from dotmac.events.testing import Collector

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("dotmac_events_outbox")
pytest.importorskip("dotmac_events_memory")

from dotmac_events_outbox import Outbox, OutboxRelay  # noqa: E402

DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def test_an_app_hosts_the_outbox_relay_and_the_delay_scheduler() -> None:
    try:
        admin = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc!r}")
    schema = f"hosted_{uuid.uuid4().hex[:8]}"
    outbox = Outbox(schema=schema)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await outbox.install(admin)

        @contextlib.asynccontextmanager
        async def lifespan(app: App) -> AsyncIterator[None]:
            async with OutboxRelay(DSN, app.bus, schema=schema, poll_interval=0.1):
                await app.bus.start_delay_scheduler()
                yield

        app = App(f"memory://hosted-{uuid.uuid4().hex[:8]}", lifespan=lifespan)
        from_outbox, delayed = Collector(), Collector()
        app.subscriber("orders.created", group="billing")(from_outbox)
        app.subscriber("orders.remind", group="billing")(delayed)
        async with app:
            async with admin.transaction():
                await outbox.publish(admin, Event(topic="orders.created", payload={"id": 7}))
            asked = time.monotonic()
            await app.bus.publish(Event(topic="orders.remind", payload={"id": 7}), delay=0.3)
            await from_outbox.wait_count(1, 20)
            await delayed.wait_count(1, 20)
            assert time.monotonic() - asked >= 0.3
        assert from_outbox.payloads("id") == [7]
        assert delayed.payloads("id") == [7]
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
