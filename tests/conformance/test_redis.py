"""The conformance kit against the Redis Streams transport.

Runs against ``$REDIS_URL`` when set, otherwise against a private ``redis-server``
started on a free port for this module.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_redis")

from dotmac_events_redis.testing import RedisServer, redis_server_available  # noqa: E402


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if not redis_server_available():
        pytest.skip("redis-server is not installed and REDIS_URL is not set")
    with RedisServer() as server:
        yield server.url


class TestRedisConformance(TransportConformance):
    timeout = 20.0

    @pytest.fixture(autouse=True)
    def _target(self, redis_url: str) -> None:
        # One key prefix per test: buses of a test share it, tests never do.
        self.url = f"{redis_url}?key_prefix=conformance:{uuid.uuid4().hex[:8]}:"

    def create_bus(self) -> EventBus:
        return create_bus(self.url)
