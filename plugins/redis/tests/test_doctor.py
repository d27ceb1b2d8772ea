"""``dotmac-events doctor`` on Redis: a healthy server, a wrong password, an ACL user
missing stream permissions, a refused connection, and the memory check."""

from __future__ import annotations

import concurrent.futures
import io
import json
from typing import Any

import redis.asyncio as aioredis

from dotmac.events import Event, create_bus
from dotmac.events.cli import main
from dotmac.events.doctor import PROBE_TYPE
from dotmac.events.testing import wait_for
from dotmac_events_redis.testing import RedisServer


def doctor(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main(["doctor", "--url", url, "--json", "--timeout", "10", *args], out=out)
    return code, json.loads(out.getvalue())


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_server_passes_and_cleans_up(redis_url: str) -> None:
    code, report = doctor(redis_url)
    by_name = checks(report)
    assert code == 0 and report["ok"], report
    assert by_name["round trip"]["ok"] and "ms" in by_name["round trip"]["detail"]
    assert by_name["cleanup"]["ok"]
    assert "maxmemory-policy" in by_name["memory"]["detail"]


def test_wrong_password_fails_connect(private_server: Any) -> None:
    server: RedisServer = private_server(password="the-right-one")
    code, report = doctor(f"redis://:the-wrong-one@127.0.0.1:{server.port}/0")
    (connect,) = report["checks"]
    assert code == 1 and connect["name"] == "connect" and connect["ok"] is False
    assert connect["fix"] == "fix the credentials"
    assert "the-wrong-one" not in json.dumps(report)


async def test_acl_user_without_stream_commands_fails_with_the_grant(private_server: Any) -> None:
    server: RedisServer = private_server()
    admin = aioredis.Redis(host=server.host, port=server.port)
    try:
        await admin.execute_command("ACL", "SETUSER", "ro", "on", ">ro-pw", "~*", "+@connection", "+ping")
    finally:
        await admin.aclose()
    code, report = main_in_thread(f"redis://ro:ro-pw@127.0.0.1:{server.port}/0")
    join = checks(report)["group join"]
    assert code == 1 and join["ok"] is False
    assert join["fix"].startswith("grant +"), join


async def test_acl_user_without_xack_fails_the_round_trip_naming_it(private_server: Any) -> None:
    server: RedisServer = private_server()
    admin = aioredis.Redis(host=server.host, port=server.port)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "noack", "on", ">noack-pw", "~*", "&*", "+@all", "-xack"
        )
    finally:
        await admin.aclose()
    code, report = main_in_thread(f"redis://noack:noack-pw@127.0.0.1:{server.port}/0")
    by_name = checks(report)
    assert code == 1
    assert by_name["group join"]["ok"] is True
    assert by_name["round trip"]["ok"] is False and by_name["round trip"]["fix"] == "grant +xack"


def main_in_thread(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    # main() runs its own event loop; an async test must not nest it in its loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(doctor, url, *args).result()


def test_refused_connection_fails_connect(private_server: Any) -> None:
    server: RedisServer = private_server()
    port = server.port
    server.stop()
    code, report = doctor(f"redis://127.0.0.1:{port}/0")
    assert code == 1 and report["checks"][0]["ok"] is False
    assert report["checks"][0]["fix"] == "check host, port, TLS and that the broker runs"


def test_memory_limit_and_policy_are_reported(private_server: Any) -> None:
    server: RedisServer = private_server(
        extra_args=["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]
    )
    code, report = doctor(f"redis://127.0.0.1:{server.port}/0")
    memory = checks(report)["memory"]
    assert code == 0
    # Streams are trimmed (max_stream_length), so noeviction is a fact, not a failure.
    assert memory["ok"] is None and "maxmemory=67108864 maxmemory-policy=noeviction" in memory["detail"]


async def test_with_topic_and_group_the_application_group_loses_nothing(private_server: Any) -> None:
    """doctor --topic T --group G publishes one probe to T but never consumes with G:
    events waiting for G are all still delivered to G afterwards, the probe with them."""
    server: RedisServer = private_server()
    url = f"redis://127.0.0.1:{server.port}/0"
    topic, group = "orders.created", "billing"
    async with create_bus(url) as app:
        first = await app.subscribe(topic, lambda event: None, group=group)
        await first.stop()
        await app.publish_many([Event(topic=topic, payload={"i": i}) for i in range(20)])
    code, report = main_in_thread(url, "--topic", topic, "--group", group)
    by_name = checks(report)
    assert code == 0, report
    assert by_name["group join (billing)"]["ok"] is True
    assert by_name["dead-letter write"]["ok"] is None  # never into a real dead-letter topic
    assert "group 'dotmac-doctor-" in by_name["cleanup"]["detail"]
    seen: list[Event] = []
    async with create_bus(url) as app:
        await app.subscribe(topic, seen.append, group=group)
        await wait_for(lambda: len(seen) >= 21, 10, what="every waiting event and the probe")
        groups = await app.transport._redis().xinfo_groups(app.transport.config.stream_key(topic))  # type: ignore[attr-defined]
    assert sorted(e.payload["i"] for e in seen if "i" in e.payload) == list(range(20))
    assert [e.event_type for e in seen if "doctor" in e.payload] == [PROBE_TYPE]
    assert [g["name"] for g in groups] == [b"billing"], "the scratch group was removed"
