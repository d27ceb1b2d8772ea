"""The conformance kit against the Redis Streams transport on a Redis Cluster.

A private 3-primary/3-replica cluster (``redis+cluster://``) is started for this
module, or ``$REDIS_CLUSTER_URL`` is used when set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_redis")

from dotmac_events_redis.testing import (  # noqa: E402
    RedisClusterServers,
    redis_cli,
    redis_server_available,
)


@pytest.fixture(scope="module")
def redis_cluster_url() -> Iterator[str]:
    url = os.environ.get("REDIS_CLUSTER_URL")
    if url:
        yield url
        return
    if not redis_server_available() or redis_cli() is None:
        pytest.skip("redis-server/redis-cli are not installed and REDIS_CLUSTER_URL is not set")
    with RedisClusterServers() as cluster:
        yield cluster.url


class TestRedisClusterConformance(TransportConformance):
    timeout = 20.0

    @pytest.fixture(autouse=True)
    def _target(self, redis_cluster_url: str) -> None:
        # One key prefix per test: buses of a test share it, tests never do.
        self.url = f"{redis_cluster_url}?key_prefix=conformance:{uuid.uuid4().hex[:8]}:"

    def create_bus(self) -> EventBus:
        return create_bus(self.url)
