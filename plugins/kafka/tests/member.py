"""A consumer-group member in a process of its own, for the kill -9 test.

Usage: python member.py SERVERS TOPIC GROUP DELAY_SECONDS BROKER_KIND

Prints ``ready`` once subscribed, then one ``handled <i>`` line per event its
handler finished (before the core acks it), flushed at once.
"""

from __future__ import annotations

import asyncio
import sys

from dotmac.events import ConsumerOptions, Event
from dotmac_events_kafka import create_kafka_bus
from dotmac_events_kafka.testing import fast_config


async def main(servers: str, topic: str, group: str, delay: float, kind: str) -> None:
    async def handle(event: Event) -> None:
        await asyncio.sleep(delay)
        print(f"handled {event.payload['i']}", flush=True)

    async with create_kafka_bus(fast_config(servers, broker=kind)) as bus:
        await bus.subscribe(topic, handle, group=group, options=ConsumerOptions(concurrency=3))
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]))
