"""A private ``redis-server`` for the pattern tests (they kill consumers, not Redis,
but keep their keys away from other engineers' servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("dotmac_events_redis")

from dotmac_events_redis.testing import RedisServer, redis_server_available  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.fail("redis-server is not installed: the pattern tests need their own server")
    with RedisServer() as running:
        yield running
