"""A consumer process for the fault tests: killed with SIGKILL, or crashing on purpose.

``--mode hold``: record each event, then never finish handling it (un-acked).
``--mode poison``: events with ``{"poison": true}`` crash the process (``os._exit``)
after recording the attempt; others are recorded and acknowledged.

Prints ``ready`` once subscribed; SIGTERM closes the bus gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from dotmac.events import ConsumerOptions, Event, create_bus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--mode", choices=("hold", "poison"), required=True)
    parser.add_argument("--record", required=True, help="file that gets one line per handler call")
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    record = open(args.record, "a", buffering=1, encoding="utf-8")  # noqa: SIM115, ASYNC230
    forever = asyncio.Event()

    async def handle(event: Event) -> None:
        if args.mode == "hold":
            record.write(f"got {event.event_id}\n")
            await forever.wait()
        elif event.payload.get("poison"):
            record.write(f"attempt {event.event_id}\n")
            record.flush()
            os.fsync(record.fileno())
            os._exit(17)  # a crash: no cleanup, no ack, no release
        else:
            record.write(f"ok {event.event_id}\n")

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    bus = create_bus(args.url)
    async with bus:
        await bus.subscribe(
            args.topic,
            handle,
            group=args.group,
            name=args.name,
            options=ConsumerOptions(prefetch_count=args.prefetch, max_retries=0),
        )
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await stop.wait()
        await bus.close(timeout=0.5)
    record.close()


if __name__ == "__main__":
    main()
