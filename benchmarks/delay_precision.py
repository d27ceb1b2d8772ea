"""Delayed delivery: lateness and rate of ``publish(..., delay=)`` through the scheduler.

One process publishes at a fixed rate for a few seconds with a fixed delay, runs the
delay scheduler and consumes the target topic; it prints how many events arrived
early (must be 0), how many were lost (must be 0) and the lateness percentiles.

    python benchmarks/delay_precision.py --url memory://bench --rate 500 --seconds 2
    python benchmarks/delay_precision.py --url redis://localhost:6379/0 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from dotmac.events import Event, create_bus


async def measure(url: str, rate: int, seconds: float, delay: float) -> dict[str, float]:
    async with create_bus(url) as consumer, create_bus(url) as producer:
        topic = f"bench.delay.{uuid.uuid4().hex[:8]}"
        arrived: dict[int, float] = {}

        async def handle(event: Event) -> None:
            arrived.setdefault(event.payload["i"], time.time())

        await consumer.subscribe(topic, handle, group="bench")
        await consumer.start_delay_scheduler()
        n = int(rate * seconds)
        due: dict[int, float] = {}
        started = time.time()
        for i in range(n):
            pause = started + i / rate - time.time()
            if pause > 0:
                await asyncio.sleep(pause)
            due[i] = time.time() + delay
            await producer.publish(Event(topic=topic, payload={"i": i}), delay=delay)
        published = n / (time.time() - started)
        deadline = time.monotonic() + delay + 60
        while len(arrived) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        late = sorted(arrived[i] - due[i] for i in arrived)
        return {
            "events": n,
            "published_per_s": round(published),
            "lost": n - len(arrived),
            "early": sum(1 for x in late if x < -0.002),
            "lateness_p50_ms": round(late[len(late) // 2] * 1000, 1),
            "lateness_p99_ms": round(late[min(len(late) - 1, int(len(late) * 0.99))] * 1000, 1),
            "lateness_max_ms": round(late[-1] * 1000, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="memory://bench")
    parser.add_argument("--rate", type=int, default=500, help="events published per second")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    print(asyncio.run(measure(args.url, args.rate, args.seconds, args.delay)))


if __name__ == "__main__":
    main()
