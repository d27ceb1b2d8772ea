"""/healthz, /readyz and /metrics of OpsServer, through a real HTTP client."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dotmac.events import Event, create_bus
from dotmac.events.testing import Collector
from dotmac_events_ops import OpsServer
from dotmac_events_redis.testing import RedisServer

T = 15.0


async def status_until(http: httpx.AsyncClient, url: str, status: int, what: str) -> httpx.Response:
    """Poll ``url`` until it answers ``status`` (within T seconds)."""
    deadline = time.monotonic() + T
    while True:
        response = await http.get(url)
        if response.status_code == status:
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {response.status_code} {response.text}")
        await asyncio.sleep(0.05)


async def test_readyz_follows_subscriptions_and_the_broker(
    redis_server: Callable[[], RedisServer], registry: CollectorRegistry, topic: str, http: httpx.AsyncClient
) -> None:
    server = redis_server()
    bus = create_bus(server.url)
    async with OpsServer(bus, port=0, registry=registry, expect_subscriptions=1, ui=False) as ops:
        # Not started: not ready, but alive.
        response = await http.get(f"{ops.url}/readyz")
        assert response.status_code == 503
        assert response.json()["started"] is False
        assert (await http.get(f"{ops.url}/healthz")).status_code == 200
        async with bus:
            # Started, but the service's subscription is not live yet.
            response = await http.get(f"{ops.url}/readyz")
            assert (response.status_code, response.json()["subscriptions"]) == (503, 0)
            sub = await bus.subscribe(topic, Collector(), group="billing")
            response = await http.get(f"{ops.url}/readyz")
            assert response.status_code == 200, response.text
            assert response.json() == {
                "ready": True,
                "started": True,
                "subscriptions": 1,
                "inactive_subscriptions": [],
                "broker": "ok",
            }

            # The broker goes away: not ready, with the reason.
            server.stop()
            response = await status_until(http, f"{ops.url}/readyz", 503, "readiness to drop")
            assert "TransportUnavailableError" in response.json()["broker"]
            assert (await http.get(f"{ops.url}/healthz")).status_code == 200  # alive all along

            # It comes back: the subscription reconnects and the service is ready again.
            server.start()
            await status_until(http, f"{ops.url}/readyz", 200, "readiness after the restart")
            await sub.stop()
            response = await http.get(f"{ops.url}/readyz")
            assert response.status_code == 503


async def test_healthz_reports_a_blocked_loop(registry: CollectorRegistry, http: httpx.AsyncClient) -> None:
    bus = create_bus("memory://")
    async with bus, OpsServer(bus, port=0, registry=registry, loop_lag_threshold=0.3) as ops:
        assert (await http.get(f"{ops.url}/healthz")).status_code == 200
        time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop is what this test is about
        response = await http.get(f"{ops.url}/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "blocked"
        assert response.json()["loop_lag_seconds"] >= 0.5


async def test_metrics_have_the_lag_of_the_bus_groups(
    redis_server: Callable[[], RedisServer], registry: CollectorRegistry, topic: str, http: httpx.AsyncClient
) -> None:
    server = redis_server()
    async with create_bus(server.url) as bus:
        seen = Collector()
        sub = await bus.subscribe(topic, seen, group="billing")
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(3)])
        await seen.wait_count(3, T)
        await sub.stop()
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(5)])
        async with OpsServer(bus, port=0, registry=registry, topics=[topic], ui=False) as ops:
            text = (await http.get(f"{ops.url}/metrics")).text
    lags = {
        (s.labels["topic"], s.labels["consumer_group"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "events_consumer_lag"
    }
    assert lags == {(topic, "billing"): 5.0}


async def test_the_server_stops_cleanly_and_frees_its_port(registry: CollectorRegistry) -> None:
    async with create_bus("memory://") as bus:
        ops = OpsServer(bus, port=0, registry=registry)
        await ops.start()
        port = ops.port
        await ops.stop()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(f"http://127.0.0.1:{port}/healthz")
        tasks = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("dotmac-events-ops")]
        assert tasks == []


async def test_token_never_reaches_logs_or_reprs(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture, http: httpx.AsyncClient
) -> None:
    secret = "s3cr3t-token-value"
    caplog.set_level(logging.DEBUG)
    async with create_bus("memory://") as bus, OpsServer(bus, port=0, registry=registry, token=secret) as ops:
        response = await http.post(f"{ops.url}/dlq/replay", data={"token": "wrong", "confirm": "yes"})
        assert response.status_code == 403
        assert secret not in repr(ops) + repr(ops.state)
    assert secret not in caplog.text
    assert "replay refused" in caplog.text


async def test_readiness_without_a_sampler_asks_the_broker_itself(topic: str) -> None:
    from dotmac_events_ops import readiness

    bus = create_bus("memory://")
    assert await readiness(bus) == (False, {"started": False})
    async with bus:
        await bus.subscribe(topic, Collector(), group="g")
        ok, checks = await readiness(bus, expect_subscriptions=1)
        assert ok and checks["broker"] == "ok"
        ok, checks = await readiness(bus, expect_subscriptions=2)
        assert not ok and checks["subscriptions"] == 1
    ok, checks = await readiness(bus)
    assert not ok and checks == {"started": False}
