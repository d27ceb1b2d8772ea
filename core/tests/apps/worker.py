"""A service the runner tests start with ``dotmac-events run`` in a subprocess.

Configured by environment variables; every handler step is appended to ``$SVC_RECORD``
(one short line per write, so lines of several processes never interleave).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from dotmac.events import App, ConsumerOptions, Event

TOPIC = os.environ.get("SVC_TOPIC", "work")
GROUP = os.environ.get("SVC_GROUP", "workers")
SECONDS = float(os.environ.get("SVC_SECONDS", "0"))
CONCURRENCY = int(os.environ.get("SVC_CONCURRENCY", "4"))
RECORD = os.environ.get("SVC_RECORD", os.devnull)


def record(line: str) -> None:
    with open(RECORD, "a") as f:
        f.write(f"{line} {os.getpid()}\n")


app = App(name="svc")


@app.subscriber(
    TOPIC, group=GROUP, options=ConsumerOptions(concurrency=CONCURRENCY, prefetch_count=CONCURRENCY * 2)
)
async def work(payload: dict[str, Any], event: Event) -> None:
    record(f"start {payload['n']}")
    await asyncio.sleep(SECONDS)
    record(f"done {payload['n']}")


@app.on_startup
async def up() -> None:
    if os.environ.get("SVC_FAIL_STARTUP"):
        raise RuntimeError(os.environ["SVC_FAIL_STARTUP"])
    record("up")


@app.on_shutdown
async def down() -> None:
    record("down")


# memory:// lives in one process: this second app, run next to the first
# (``dotmac-events run worker:app worker:feeder``), publishes the work once the
# first one's subscription is live.
feeder = App(name="feeder")


@feeder.on_startup
async def feed() -> None:
    for n in range(int(os.environ.get("SVC_FEED", "0"))):
        await feeder.publish(TOPIC, {"n": n})
