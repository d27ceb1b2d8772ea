"""The core's CPU per event on ``memory://`` beside ``asyncio.Queue + orjson``, in process.

Runs the end-to-end workload of ``dotmac.events.bench`` (publish one event per await,
a consumer group handling each) on ``memory://`` and on the queue contender,
alternately, and prints for each round the CPU per event (``time.process_time``,
publisher and consumer share the process) and the throughput ratio of the two. The
ratio of one process's two contenders moves less with machine load than either
figure alone. ``--profile`` writes a cProfile of the bus's rounds instead (read it
with ``python -m pstats``).

Compare two commits by running it against each in turn, interleaved, e.g. with
``PYTHONPATH=<other>/core/src:<other>/plugins/memory/src``.

    python benchmarks/core_cost.py --events 20000 --rounds 5
    python benchmarks/core_cost.py --profile /tmp/bus.prof
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# As benchmarks/run.py runs bus-memory: no other plugin's hooks on the path.
os.environ.setdefault("DOTMAC_EVENTS_LOAD_PLUGINS", "memory")

from contenders import QueueContender

from dotmac.events.bench import BusContender, Contender, run_workloads


async def one_round(contender: Contender, events: int, workload: str) -> dict[str, Any]:
    await contender.start()
    try:
        results = await run_workloads(contender, events=events, workloads=[workload], warmup=1000)
    finally:
        await contender.close()
    return results[workload]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workload", default="e2e_publish", choices=("e2e_publish", "e2e_batch"))
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the bus's rounds here")
    args = parser.parse_args()

    def bus() -> Contender:
        return BusContender("memory://core-cost?retention=10000", name="bus-memory")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.rounds):
            asyncio.run(one_round(bus(), args.events, args.workload))
        profiler.disable()
        profiler.dump_stats(args.profile)
        return

    bus_cpu: list[float] = []
    ratios: list[float] = []
    queue_cpu: list[float] = []
    for n in range(args.rounds):
        b = asyncio.run(one_round(bus(), args.events, args.workload))
        q = asyncio.run(one_round(QueueContender(), args.events, "e2e_publish"))
        bus_cpu.append(b["cpu_us_per_event"])
        queue_cpu.append(q["cpu_us_per_event"])
        ratios.append(b["events_per_s"] / q["events_per_s"])
        print(
            f"round {n + 1}: bus {b['cpu_us_per_event']:6.2f} us/event {b['events_per_s']:9,.0f}/s   "
            f"queue {q['cpu_us_per_event']:5.2f} us/event {q['events_per_s']:9,.0f}/s   "
            f"ratio {ratios[-1]:.3f}x",
            flush=True,
        )
    print(
        f"median: bus {statistics.median(bus_cpu):.2f} us/event (best {min(bus_cpu):.2f}), "
        f"queue {statistics.median(queue_cpu):.2f}, ratio {statistics.median(ratios):.3f}x"
    )


if __name__ == "__main__":
    main()
