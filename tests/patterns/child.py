"""A consumer process for the pattern fault tests; killed with SIGKILL by the test.

Modes: ``scheduler`` runs a delay scheduler; ``retry`` consumes ``--topic`` with one
retry topic and a handler that always fails; ``batch`` consumes ``--topic`` in
batches with a handler that never returns. Prints ``ready`` once live.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from dotmac.events import ConsumerOptions, Event, create_bus


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("scheduler", "retry", "batch"), required=True)
    parser.add_argument("--topic", default="")
    parser.add_argument("--group", default="")
    parser.add_argument("--delay", type=float, default=60.0)
    args = parser.parse_args()
    async with create_bus(args.url) as bus:
        if args.mode == "scheduler":
            await bus.start_delay_scheduler()
        elif args.mode == "retry":

            async def fail(_event: Event) -> None:
                raise RuntimeError("down")

            await bus.subscribe(
                args.topic, fail, group=args.group, options=ConsumerOptions(retry_topics=(args.delay,))
            )
        else:

            async def hang(_events: list[Event]) -> None:
                await asyncio.Event().wait()

            await bus.subscribe_batch(args.topic, hang, group=args.group, max_size=50, max_wait_ms=50)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
