"""``dotmac-events dlq replay``: its filters, ``--dry-run``, the replay ledger and
``--force``, and a bad time bound.

The command runs in the test's event loop, next to a started bus on the same
``memory://`` broker (an in-process broker lives as long as a bus uses it), so it
sees the dead letters that bus wrote.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac.events.cli import build_parser
from dotmac.events.testing import Collector, wait_for

pytest.importorskip("dotmac_events_memory")

T = 5.0


async def _command(*argv: str) -> tuple[int, list[dict[str, Any]]]:
    args = build_parser().parse_args(list(argv))
    out = io.StringIO()
    code = await args.func(args, out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


class Declined(Exception):
    pass


async def test_replay_filters_dry_run_ledger_and_force(memory_url: str) -> None:
    broken = {"on": True}

    def fail(event: Event, _n: int) -> BaseException | None:
        if not broken["on"]:
            return None
        return Declined("card declined") if event.payload["kind"] == "declined" else KeyError("sku")

    async with create_bus(memory_url) as bus:
        billing = Collector(fail=fail)
        sub = await bus.subscribe("orders", billing, group="billing", options=ConsumerOptions(max_retries=0))
        before = datetime.now(timezone.utc) - timedelta(seconds=1)
        events = [Event(topic="orders", payload={"kind": kind}) for kind in ("declined", "sku", "declined")]
        await bus.publish_many(events)
        await wait_for(lambda: sub.dead_lettered == 3, T, what="three dead letters")
        after = datetime.now(timezone.utc) + timedelta(seconds=1)
        declined = {events[0].event_id, events[2].event_id}
        types = {letter.event_id: letter.error_type for letter in await bus.dlq.list("orders.dlq")}
        error_type = types[events[0].event_id]
        assert error_type is not None and error_type.endswith("Declined")
        assert types[events[1].event_id] != error_type

        replay = ("dlq", "replay", "orders.dlq", "--url", memory_url)
        # --dry-run prints what would be sent, and sends nothing.
        code, lines = await _command(*replay, "--dry-run", "--error-type", error_type)
        assert code == 0
        assert {line["event_id"] for line in lines[:-1]} == declined
        assert all(line["consumer_group"] == "billing" for line in lines[:-1])
        assert lines[-1] == {"would_replay": 2, "from": "orders.dlq", "dry_run": True}
        # Each filter leaves out what does not match it.
        window = ("--since", before.isoformat(), "--until", after.isoformat())
        code, lines = await _command(
            *replay, "--dry-run", "--event-id", events[1].event_id, "--group", "billing", *window
        )
        assert [line["event_id"] for line in lines[:-1]] == [events[1].event_id]
        for empty in (
            ("--group", "shipping"),
            ("--until", before.isoformat()),
            ("--since", after.isoformat()),
        ):
            code, lines = await _command(*replay, "--dry-run", *empty)
            assert (code, lines) == (0, [{"would_replay": 0, "from": "orders.dlq", "dry_run": True}]), empty
        assert billing.total_calls == 3  # nothing was sent by the dry runs

        broken["on"] = False
        code, lines = await _command(*replay, "--error-type", error_type)
        assert (code, lines) == (0, [{"replayed": 2, "from": "orders.dlq"}])
        await wait_for(lambda: billing.total_calls == 5, T, what="the two replayed events")
        assert {e.event_id for e in billing.events} == declined
        # The ledger keeps a second replay from sending them again; --force does.
        code, lines = await _command(*replay, "--error-type", error_type)
        assert lines == [{"replayed": 0, "from": "orders.dlq"}]
        code, lines = await _command(*replay, "--error-type", error_type, "--dry-run", "--force")
        assert lines[-1]["would_replay"] == 2


async def test_a_bad_time_bound_is_refused_before_connecting() -> None:
    # No broker under this URL: the bound is checked before a bus is created.
    code, lines = await _command("dlq", "replay", "orders.dlq", "--url", "nosuch://x", "--until", "yesterday")
    assert code == 2
    assert lines == [{"error": "--until is not an RFC 3339 time: 'yesterday'"}]
