"""A group member in a process of its own, for the SIGKILL test.

argv: URL TOPIC GROUP OUTFILE. Prints "ready" once subscribed; appends the payload
``i`` of each handled event to OUTFILE (one line, flushed) before the ack.
"""

from __future__ import annotations

import asyncio
import sys

from dotmac.events import ConsumerOptions, Event, create_bus


async def main(url: str, topic: str, group: str, outfile: str) -> None:
    with open(outfile, "a", buffering=1) as out:  # noqa: ASYNC230 - one line per event

        async def handle(event: Event) -> None:
            await asyncio.sleep(0.01)
            out.write(f"{event.payload['i']}\n")

        async with create_bus(url) as bus:
            await bus.subscribe(topic, handle, group=group, options=ConsumerOptions(concurrency=4))
            print("ready", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
