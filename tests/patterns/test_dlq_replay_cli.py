"""``dotmac-events dlq replay`` filters, dry run and the replay ledger, against Redis."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import pytest

from dotmac.events import ConsumerOptions, Event, NonRetryableError, create_bus
from dotmac.events.cli import main
from dotmac.events.testing import Collector, wait_for

pytest.importorskip("dotmac_events_redis")

from dotmac_events_redis.testing import RedisServer  # noqa: E402

T = 15.0


@pytest.fixture
def redis_url(server: RedisServer) -> str:
    return server.url


def run(args: list[str]) -> list[dict[str, object]]:
    out = io.StringIO()
    assert main(args, out=out) == 0, out.getvalue()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_replay_filters_dry_run_and_the_ledger(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=patterns:{uuid.uuid4().hex[:8]}:"
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    dlq = f"{topic}.dlq"

    async def fail_four() -> None:
        async with create_bus(url) as bus:

            def fail(event: Event, _n: int) -> BaseException:
                if event.payload["i"] % 2:
                    return NonRetryableError("rejected")
                return RuntimeError("down")

            sub = await bus.subscribe(
                topic, Collector(fail=fail), group="billing", options=ConsumerOptions(max_retries=0)
            )
            await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(4)])
            await wait_for(lambda: sub.dead_lettered == 4, T, what="4 dead letters")

    asyncio.run(fail_four())
    base = ["dlq", "replay", dlq, "--url", url]
    planned = run([*base, "--dry-run", "--error-type", "NonRetryableError"])
    assert planned[-1] == {"would_replay": 2, "from": dlq, "dry_run": True}
    assert sorted(p["attempts"] for p in planned[:-1]) == [1, 1]
    assert {p["error_type"] for p in planned[:-1]} == {"NonRetryableError"}
    assert run([*base, "--dry-run", "--since", "2999-01-01T00:00:00Z"])[-1]["would_replay"] == 0
    assert run([*base, "--dry-run", "--group", "shipping"])[-1]["would_replay"] == 0
    assert run([*base, "--error-type", "NonRetryableError"]) == [{"replayed": 2, "from": dlq}]
    # The ledger remembers: only the two others are left, then nothing.
    assert run([*base, "--dry-run"])[-1]["would_replay"] == 2
    assert run(base) == [{"replayed": 2, "from": dlq}]
    assert run(base) == [{"replayed": 0, "from": dlq}]
    assert run([*base, "--dry-run", "--force"])[-1]["would_replay"] == 4

    async def read_back() -> list[tuple[int, str, str]]:
        async with create_bus(url) as bus:
            return [
                (json.loads(m.value)["i"], m.headers["x-replay-group"], m.headers["x-replay-count"])
                for m in (await bus.transport.read(topic))[4:]
            ]

    replayed = asyncio.run(read_back())
    assert sorted(replayed) == [(i, "billing", "1") for i in range(4)]
    print(f"\ndlq replay cli: replayed={len(replayed)} duplicates=0 second replay sent=0")


def test_replay_rejects_a_bad_time(redis_url: str) -> None:
    out = io.StringIO()
    assert main(["dlq", "replay", "x.dlq", "--url", redis_url, "--since", "yesterday"], out=out) == 2
    assert "--since" in out.getvalue()
