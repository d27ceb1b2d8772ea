"""A consumer process for the fault tests, to be killed with SIGKILL mid-stream.

Records ``ok <event id>`` for each event it handled (just before the bus acks it),
handling each in ``--delay`` seconds. An event with ``{"poison": true}`` records
``attempt <event id>`` and crashes the process (``os._exit``: no ack, no release).
Prints ``ready`` once subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from dotmac.events import ConsumerOptions, Event, create_bus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--record", required=True, help="file that gets one line per handled event")
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--prefetch", type=int, default=20)
    parser.add_argument("--start-from", default="latest", choices=("latest", "earliest"))
    args = parser.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    record = open(args.record, "a", buffering=1, encoding="utf-8")  # noqa: SIM115, ASYNC230

    async def handle(event: Event) -> None:
        if event.payload.get("poison"):
            record.write(f"attempt {event.event_id}\n")
            record.flush()
            os.fsync(record.fileno())
            os._exit(17)  # a crash: no cleanup, no ack, no release
        await asyncio.sleep(args.delay)
        record.write(f"ok {event.event_id}\n")

    async with create_bus(args.url) as bus:
        await bus.subscribe(
            args.topic,
            handle,
            group=args.group,
            options=ConsumerOptions(
                prefetch_count=args.prefetch, concurrency=4, max_retries=0, start_from=args.start_from
            ),
        )
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    main()
