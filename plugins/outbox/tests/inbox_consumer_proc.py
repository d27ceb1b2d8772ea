"""A consumer process for the inbox crash test: dies right after its transaction committed.

Handles events with ``PostgresInbox.transactional``: each handler call inserts one
row into ``--effects-table``. After the ``--crash-after``-th committed event the
process exits with ``os._exit`` (no ack, no cleanup), so the broker redelivers an
event whose effect and inbox record are already committed. Prints ``ready`` once
subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import asyncpg

from dotmac.events import ConsumerOptions, Event, create_bus
from dotmac_events_outbox import PostgresInbox


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--url", "--topic", "--group", "--db", "--inbox-table", "--effects-table"):
        parser.add_argument(name, required=True)
    parser.add_argument("--crash-after", type=int, required=True)
    asyncio.run(run(parser.parse_args()))


async def run(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.db, min_size=1, max_size=2)
    inbox = PostgresInbox(pool, table=args.inbox_table)
    committed = 0

    async def apply(event: Event, conn: Any) -> None:
        await conn.execute(
            f"INSERT INTO {args.effects_table} (event_id, attempt) VALUES ($1, 1)", event.event_id
        )

    handle = inbox.transactional(apply, group=args.group)

    async def handle_then_crash(event: Event) -> None:
        nonlocal committed
        await handle(event)
        committed += 1
        if committed == args.crash_after:
            os._exit(17)  # committed, not acked

    async with create_bus(args.url) as bus:
        await bus.subscribe(
            args.topic,
            handle_then_crash,
            group=args.group,
            name="doomed",
            options=ConsumerOptions(prefetch_count=5, concurrency=1),
        )
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.Event().wait()


if __name__ == "__main__":
    main()
