"""How cost grows: throughput and client CPU per event as one thing is scaled up, and
memory per subscription and per in-flight event.

Series (each point in a fresh interpreter, rounds interleaved, medians reported):

- ``payload``: payload of 200 B, 10 KB and 1 MB (the benchmark order plus a filler
  string), on ``memory://`` and ``redis://``; ``publish_many`` in batches of at most
  500 events or 2 MB, one subscription, default consumer options.
- ``topics``: 1, 10 and 100 topics on one bus, one consumer group (one subscription)
  per topic, the same N events spread round-robin over the topics.
- ``concurrency``: ``ConsumerOptions(concurrency=1, 8, 64)`` with a handler that
  awaits ``asyncio.sleep(0.001)`` (1 ms of waiting, as for a small I/O call), so that
  concurrency matters; the events carry 64 distinct keys.
- ``workers``: 1, 2 and 4 consumer processes in one group on Redis and Kafka (a
  4-partition topic), the publisher in another process; handlers return at once.
  Consumer CPU is the sum over the worker processes.
- ``rss-subscriptions``: resident memory of a bus with 1 and with 101 subscriptions
  (each its own topic and group, each seen handling an event); per subscription is
  the difference / 100.
- ``rss-inflight``: resident memory of a Redis consumer holding P = 10 and P = 10,000
  events in flight: ``prefetch_count=P``, the handler blocked on an ``asyncio.Event``
  with the first event, until the group's pending count is P (the backlog is
  published by another process); per in-flight event is the difference / 9,990.

RSS is the current resident set (``/proc/self/statm`` after ``gc.collect()``; the
peak from ``getrusage`` where there is no ``/proc``). Throughput counts from the first
publish to the last handled event; CPU is ``time.process_time`` of the process that
publishes and consumes (of the consumer processes for ``workers``) per event.

    python benchmarks/scaling.py                      # every series, 3 rounds (< 7 min on 2 cores)
    python benchmarks/scaling.py --only payload,topics --rounds 5
    python benchmarks/scaling.py --smoke              # tiny and quick: the numbers mean nothing
    python benchmarks/scaling.py --json out.json --plots docs/img/performance
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULT_MARK = "SCALE-RESULT "
SERIES = ("payload", "topics", "concurrency", "workers", "rss-subscriptions", "rss-inflight")
KAFKA_PARTITIONS = 4  # as many as the largest group of worker processes
HANDLER_SLEEP = 0.001  # the concurrency series' handler: await asyncio.sleep(HANDLER_SLEEP)
BATCH_EVENTS = 500
BATCH_BYTES = 2_000_000
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Point:
    series: str
    transport: str  # memory, redis or kafka
    x: int
    events: int = 0

    @property
    def key(self) -> str:
        return f"{self.series}/{self.transport}/{self.x}"


def plan(series: Sequence[str], smoke: bool) -> list[Point]:
    """Every point of the run with its N, chosen so that the default run stays under
    7 minutes on a quiet 2-core machine. ``smoke`` keeps two points of each series on
    one transport (no Kafka) with tiny N."""
    sizes = {
        "memory": {200: 20_000, 10_000: 5_000, 1_000_000: 100},
        "redis": {200: 10_000, 10_000: 3_000, 1_000_000: 60},
    }
    flat = {"memory": 20_000, "redis": 10_000}
    points: list[Point] = []
    for transport in ("memory", "redis"):
        points += [Point("payload", transport, size, n) for size, n in sizes[transport].items()]
        points += [Point("topics", transport, t, flat[transport]) for t in (1, 10, 100)]
        points += [Point("concurrency", transport, c, 2_000) for c in (1, 8, 64)]
    points += [Point("workers", "redis", k, 10_000) for k in (1, 2, 4)]
    points += [Point("workers", "kafka", k, 5_000) for k in (1, 2, 4)]
    points += [Point("rss-subscriptions", t, s) for t in ("memory", "redis") for s in (1, 101)]
    points += [Point("rss-inflight", "redis", p) for p in (10, 10_000)]
    if smoke:
        smoke_points: list[Point] = []
        for name in SERIES:
            transport = (
                "memory" if name in ("payload", "topics", "concurrency", "rss-subscriptions") else "redis"
            )
            mine = [p for p in points if p.series == name and p.transport == transport][:2]
            if name == "rss-inflight":
                mine = [Point(name, transport, 10), Point(name, transport, 100)]
            smoke_points += [Point(p.series, p.transport, p.x, min(p.events, 200)) for p in mine]
        points = smoke_points
    order = {name: i for i, name in enumerate(SERIES)}
    return sorted((p for p in points if p.series in series), key=lambda p: order[p.series])


# -- shared pieces ------------------------------------------------------------------------
def rss_kib() -> float:
    """Current resident set in KiB (the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024 if sys.platform == "darwin" else float(peak)


def payload(seq: int, size: int) -> dict[str, Any]:
    """The benchmark order, padded with a filler string to about ``size`` bytes of JSON."""
    from dotmac.events.bench import order_payload

    order = order_payload(seq)
    if size > 200:
        order["note"] = "x" * (size - 200)
    return order


def bus_url(transport: str, servers: Mapping[str, str], retention: int = 10_000) -> str:
    if transport == "memory":
        return f"memory://scale?retention={retention}"
    if transport == "redis":
        return servers["redis"]
    from contenders import bus_kafka_query

    return f"kafka://{servers['kafka']}?{bus_kafka_query()}&num_partitions={KAFKA_PARTITIONS}"


def make_bus(transport: str, servers: Mapping[str, str], retention: int = 10_000) -> Any:
    from dotmac.events import create_bus

    return create_bus(bus_url(transport, servers, retention), max_message_bytes=MAX_MESSAGE_BYTES)


def event(topic: str, body: dict[str, Any], *, keyed: bool = True) -> Any:
    from dotmac.events import Event
    from dotmac.events.bench import HEADERS

    return Event(topic=topic, payload=body, key=body["customer_id"] if keyed else None, headers=HEADERS)


def batches(events: int, size: int) -> list[range]:
    step = max(1, min(BATCH_EVENTS, BATCH_BYTES // max(size, 1)))
    return [range(i, min(events, i + step)) for i in range(0, events, step)]


class Seen:
    """Counts distinct events (a redelivery is allowed, not counted twice)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = bytearray(target)
        self.count = 0
        self.last = 0.0
        self.done = asyncio.Event()
        self.probed: set[str] = set()
        self.probe = asyncio.Event()

    def __call__(self, topic: str, seq: int) -> None:
        if seq < 0:
            self.probed.add(topic)
            self.probe.set()
            return
        if self.seen[seq]:
            return
        self.seen[seq] = 1
        self.count += 1
        if self.count == self.target:
            self.last = time.perf_counter()
            self.done.set()


async def until(
    condition: Callable[[], bool], poke: Callable[[], Any], what: str, timeout: float = 60.0
) -> None:
    """Call ``poke`` (publish probes) until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        await poke()
        for _ in range(50):  # up to 0.5 s for the probes to arrive
            if condition():
                return
            await asyncio.sleep(0.01)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:.0f}s")


# -- in-process series: payload, topics, concurrency ----------------------------------------
async def inproc(point: Point, servers: Mapping[str, str]) -> dict[str, Any]:
    from dotmac.events import ConsumerOptions

    size = point.x if point.series == "payload" else 200
    n_topics = point.x if point.series == "topics" else 1
    concurrency = point.x if point.series == "concurrency" else 1
    sleep = HANDLER_SLEEP if point.series == "concurrency" else None
    base = f"scale.{point.series}.{uuid.uuid4().hex[:8]}"
    topics = [f"{base}.t{i}" for i in range(n_topics)]
    seen = Seen(point.events)
    bus = make_bus(point.transport, servers, retention=max(10_000, point.events))
    await bus.start()
    subs = []
    try:
        for topic in topics:

            async def handle(ev: Any, _topic: str = topic) -> None:
                if sleep is not None:
                    await asyncio.sleep(sleep)
                seen(_topic, ev.payload["order_id"])

            options = ConsumerOptions(start_from="earliest", concurrency=concurrency)
            subs.append(await bus.subscribe(topic, handle, group=f"{topic}.g", options=options))
        probe = payload(-1, 200)
        await until(
            lambda: len(seen.probed) == n_topics,
            lambda: bus.publish_many([event(t, probe) for t in topics if t not in seen.probed]),
            "the subscriptions did not start",
        )
        bodies = [payload(seq, size) for seq in range(min(point.events, 64))]
        gc.collect()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for chunk in batches(point.events, size):
            await bus.publish_many(
                [
                    event(topics[seq % n_topics], {**bodies[seq % len(bodies)], "order_id": seq})
                    for seq in chunk
                ]
            )
        await asyncio.wait_for(seen.done.wait(), 120 + point.events / 100)
        cpu = time.process_time() - cpu0
        seconds = seen.last - t0
    finally:
        for sub in subs:
            await sub.stop()
        await bus.close()
    return {
        "events_per_s": point.events / seconds,
        "cpu_us_per_event": cpu / point.events * 1e6,
        "seconds": seconds,
    }


# -- memory: subscriptions and in-flight events --------------------------------------------
async def rss_subscriptions(point: Point, servers: Mapping[str, str]) -> dict[str, Any]:
    base = f"scale.subs.{uuid.uuid4().hex[:8]}"
    topics = [f"{base}.t{i}" for i in range(point.x)]
    seen = Seen(1)
    bus = make_bus(point.transport, servers)
    await bus.start()
    subs = []
    try:
        for topic in topics:

            async def handle(ev: Any, _topic: str = topic) -> None:
                seen(_topic, ev.payload["order_id"])

            subs.append(await bus.subscribe(topic, handle, group=f"{topic}.g"))
        probe = payload(-1, 200)
        await until(
            lambda: len(seen.probed) == point.x,
            lambda: bus.publish_many([event(t, probe) for t in topics if t not in seen.probed]),
            "the subscriptions did not start",
        )
        gc.collect()
        rss = rss_kib()
    finally:
        for sub in subs:
            await sub.stop()
        await bus.close()
    return {"rss_kib": rss}


async def rss_inflight(point: Point, servers: Mapping[str, str]) -> dict[str, Any]:
    import redis.asyncio as redis

    from dotmac.events import ConsumerOptions

    topic = f"scale.inflight.{uuid.uuid4().hex[:8]}"
    # The backlog comes from another process, so that its garbage is not in this RSS.
    subprocess.run(
        [sys.executable, __file__, "--publish-backlog", topic, str(point.x), "--redis-url", servers["redis"]],
        check=True,
        timeout=120,
    )
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(ev: Any) -> None:
        entered.set()
        await release.wait()

    async def pending(client: Any) -> int:
        groups = await client.xinfo_groups(f"dotmac:events:{topic}")
        return sum(int(g["pending"]) for g in groups)

    def window_full(sub: Any) -> bool:
        # The runner's count of held deliveries (a private attribute: where it is
        # missing, Redis's pending count and the first handler call have to do).
        window = getattr(sub, "_window", None)
        return window is None or window.held >= point.x

    bus = make_bus(point.transport, servers)
    client = redis.from_url(servers["redis"])
    await bus.start()
    try:
        # One handler call blocked, the transport fills the prefetch window: P events
        # delivered (Redis's pending count), received and held by the runner.
        options = ConsumerOptions(start_from="earliest", prefetch_count=point.x)
        sub = await bus.subscribe(topic, hold, group=f"{topic}.g", options=options)
        try:
            deadline = time.monotonic() + 120
            held = 0
            while (held := await pending(client)) < point.x or not entered.is_set() or not window_full(sub):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{point.key}: {held} of {point.x} events delivered")
                await asyncio.sleep(0.01)  # nothing to await: poll Redis and the runner
            gc.collect()
            rss = rss_kib()
        finally:
            release.set()
            await sub.stop()
    finally:
        await client.aclose()
        await bus.close()
    return {"rss_kib": rss, "in_flight": held}


async def publish_backlog(topic: str, count: int, redis_url: str) -> None:
    bus = make_bus("redis", {"redis": redis_url})
    await bus.start()
    try:
        for chunk in batches(count, 200):
            # No key: keyed events hash onto lanes and those sharing a lane wait for each
            # other, while a keyless one takes the shortest lane, so all P can be in flight.
            await bus.publish_many([event(topic, payload(seq, 200), keyed=False) for seq in chunk])
    finally:
        await bus.close()


# -- worker processes in one group --------------------------------------------------------
async def consumer(transport: str, servers: Mapping[str, str], topic: str, group: str, events: int) -> None:
    """One worker process: prints ``ready``, ``probe``, ``count N`` lines, and its
    totals when its stdin closes."""
    from dotmac.events import ConsumerOptions

    seen = Seen(events)
    first = 0.0

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def handle(ev: Any) -> None:
        nonlocal first
        if not first and ev.payload["order_id"] >= 0:
            first = time.perf_counter()
        seen(topic, ev.payload["order_id"])
        seen.last = time.perf_counter()

    bus = make_bus(transport, servers)
    await bus.start()
    sub = await bus.subscribe(topic, handle, group=group, options=ConsumerOptions(start_from="earliest"))
    cpu0 = time.process_time()
    say("ready")
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    reported = -1
    probed = False
    while not stdin_closed.done():
        if seen.probed and not probed:
            probed = True
            say("probe")
        if seen.count != reported:
            reported = seen.count
            say(f"count {reported}")
        await asyncio.wait([stdin_closed], timeout=0.02)
    cpu = time.process_time() - cpu0
    await sub.stop()
    await bus.close()
    say(RESULT_MARK + json.dumps({"count": seen.count, "cpu": cpu, "first": first, "last": seen.last}))


@dataclass
class _Member:
    """What the workers series knows of one consumer process, from its stdout."""

    ready: bool = False
    probe: bool = False
    count: int = 0
    result: dict[str, Any] | None = None


async def workers(point: Point, servers: Mapping[str, str], script_args: list[str]) -> dict[str, Any]:
    topic = f"scale.workers.{uuid.uuid4().hex[:8]}"
    group = f"{topic}.g"
    argv = [
        sys.executable,
        __file__,
        "--consumer",
        point.transport,
        topic,
        group,
        str(point.events),
        *script_args,
    ]
    procs = [
        await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=os.environ.copy()
        )
        for _ in range(point.x)
    ]
    state = [_Member() for _ in procs]
    changed = asyncio.Event()

    async def read(i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if line == "ready":
                state[i].ready = True
            elif line == "probe":
                state[i].probe = True
            elif line.startswith("count "):
                state[i].count = int(line.split()[1])
            elif line.startswith(RESULT_MARK):
                state[i].result = json.loads(line[len(RESULT_MARK) :])
            changed.set()

    async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or any(p.returncode is not None for p in procs):
                raise RuntimeError(f"{point.key}: {what}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.5))

    readers = [asyncio.create_task(read(i, p)) for i, p in enumerate(procs)]
    bus = make_bus(point.transport, servers)
    await bus.start()
    try:
        await wait_for(lambda: all(s.ready for s in state), 60, "the worker processes did not subscribe")
        probe_round = 0

        async def poke() -> None:
            nonlocal probe_round
            probe_round += 1
            # Many keys, so that every partition (every member) gets a probe.
            await bus.publish_many(
                [
                    event(topic, {**payload(-1, 200), "customer_id": f"probe-{probe_round}-{k}"})
                    for k in range(8 * KAFKA_PARTITIONS)
                ]
            )

        await until(lambda: all(s.probe for s in state), poke, "not every worker process saw a probe")
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for chunk in batches(point.events, 200):
            await bus.publish_many([event(topic, payload(seq, 200)) for seq in chunk])
        publisher_cpu = time.process_time() - cpu0
        await wait_for(
            lambda: sum(s.count for s in state) >= point.events,
            120 + point.events / 100,
            "the events were not all handled",
        )
    finally:
        await bus.close()
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 60)
        await asyncio.gather(*readers)
    results = [s.result for s in state if s.result is not None]
    if len(results) != len(state):
        raise RuntimeError(f"{point.key}: a worker process printed no totals")
    last = max(r["last"] for r in results if r["count"])
    consumer_cpu = sum(r["cpu"] for r in results)
    return {
        "events_per_s": point.events / (last - t0),
        "cpu_us_per_event": consumer_cpu / point.events * 1e6,
        "publisher_cpu_us_per_event": publisher_cpu / point.events * 1e6,
        "per_worker": [r["count"] for r in results],
        "seconds": last - t0,
    }


# -- one point in its own interpreter -------------------------------------------------------
def point_main(args: argparse.Namespace) -> None:
    from contenders import quiet_logs

    quiet_logs()
    series, transport, x, events = args.point.split(":")
    point = Point(series, transport, int(x), int(events))
    servers = {k: v for k, v in (("redis", args.redis_url), ("kafka", args.kafka)) if v}
    if series in ("payload", "topics", "concurrency"):
        result = asyncio.run(inproc(point, servers))
    elif series == "workers":
        result = asyncio.run(workers(point, servers, server_args(servers)))
    elif series == "rss-subscriptions":
        result = asyncio.run(rss_subscriptions(point, servers))
    else:
        result = asyncio.run(rss_inflight(point, servers))
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")


def server_args(servers: Mapping[str, str]) -> list[str]:
    out = []
    if "redis" in servers:
        out += ["--redis-url", servers["redis"]]
    if "kafka" in servers:
        out += ["--kafka", servers["kafka"]]
    return out


def run_point(point: Point, servers: Mapping[str, str], timeout: float) -> dict[str, Any]:
    argv = [
        sys.executable,
        __file__,
        "--point",
        f"{point.series}:{point.transport}:{point.x}:{point.events}",
        *server_args(servers),
    ]
    env = {**os.environ, "DOTMAC_EVENTS_LOAD_PLUGINS": point.transport}
    env.setdefault("PYTHONHASHSEED", "0")
    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{point.key} failed with exit status {out.returncode} (its stderr is above)")
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    raise RuntimeError(f"{point.key} printed no result")


# -- report -----------------------------------------------------------------------------------
def summarize(points: Sequence[Point], runs: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for point in points:
        rounds = runs.get(point.key) or []
        if not rounds:
            continue
        row: dict[str, Any] = {
            "series": point.series,
            "transport": point.transport,
            "x": point.x,
            "events": point.events,
            "rounds": len(rounds),
        }
        for metric in ("events_per_s", "cpu_us_per_event", "publisher_cpu_us_per_event", "rss_kib"):
            values = [r[metric] for r in rounds if metric in r]
            if values:
                row[metric] = statistics.median(values)
                row[f"{metric}_spread"] = (max(values) - min(values)) / row[metric] if row[metric] else 0.0
        rows.append(row)
    return rows


def memory_sizing(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-subscription and per-in-flight-event KiB from the RSS pairs."""
    out = []
    for series, what in (("rss-subscriptions", "per subscription"), ("rss-inflight", "per in-flight event")):
        for transport in ("memory", "redis"):
            pair = sorted(
                (r for r in rows if r["series"] == series and r["transport"] == transport),
                key=lambda r: r["x"],
            )
            if len(pair) != 2:
                continue
            low, high = pair
            out.append(
                {
                    "what": what,
                    "transport": transport,
                    "low": low["x"],
                    "high": high["x"],
                    "rss_low_kib": low["rss_kib"],
                    "rss_high_kib": high["rss_kib"],
                    "kib_each": (high["rss_kib"] - low["rss_kib"]) / (high["x"] - low["x"]),
                }
            )
    return out


UNITS = {
    "payload": "payload bytes",
    "topics": "topics (one group each)",
    "concurrency": "concurrency",
    "workers": "worker processes",
}


def render(report: Mapping[str, Any]) -> str:
    rows = report["rows"]
    lines = [f"dotmac-events scaling: median of {report['config']['rounds']} round(s)", ""]
    header = (
        f"{'series':<12} {'transport':<9} {'x':>9} {'events':>7} {'events/s':>10} "
        f"{'CPU µs/ev':>10} {'spread':>7}"
    )
    lines += [header, "-" * len(header)]
    for r in rows:
        if "events_per_s" not in r:
            continue
        lines.append(
            f"{r['series']:<12} {r['transport']:<9} {r['x']:>9,} {r['events']:>7,} "
            f"{r['events_per_s']:>10,.0f} {r['cpu_us_per_event']:>10,.1f} {r['events_per_s_spread']:>7.0%}"
        )
    sizing = report["memory"]
    if sizing:
        lines += ["", "memory (RSS, KiB)"]
        for m in sizing:
            lines.append(
                f"{m['what']:<20} {m['transport']:<7} {m['low']:>6,}: {m['rss_low_kib']:>9,.0f}  "
                f"{m['high']:>6,}: {m['rss_high_kib']:>9,.0f}  -> {m['kib_each']:,.2f} KiB each"
            )
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """One PNG per throughput series: events/s and CPU µs per event against x (log axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    rows = report["rows"]
    for series, unit in UNITS.items():
        mine = [r for r in rows if r["series"] == series and "events_per_s" in r]
        if not mine:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        for transport in ("memory", "redis", "kafka"):
            line = sorted((r for r in mine if r["transport"] == transport), key=lambda r: r["x"])
            if not line:
                continue
            xs = [r["x"] for r in line]
            left.plot(xs, [r["events_per_s"] for r in line], marker="o", label=f"{transport}://")
            right.plot(xs, [r["cpu_us_per_event"] for r in line], marker="o", label=f"{transport}://")
        for ax, label in ((left, "events/s"), (right, "client CPU, µs per event")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(unit)
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xticks(sorted({r["x"] for r in mine}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"{v:,.0f}"))
            ax.minorticks_off()
        left.legend()
        fig.suptitle(f"dotmac-events: {series} (median of {report['config']['rounds']} rounds)", fontsize=10)
        fig.tight_layout()
        path = directory / f"scaling-{series}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


# -- orchestration --------------------------------------------------------------------------
def orchestrate(args: argparse.Namespace, points: list[Point]) -> int:
    from servers import RedisServer, TansuServer, log, unwind_on_signals

    unwind_on_signals()
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {p.key: [] for p in points}
    failures: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        servers: dict[str, str] = {}
        if any(p.transport == "redis" for p in points):
            servers["redis"] = stack.enter_context(RedisServer()).url
        if any(p.transport == "kafka" for p in points):
            servers["kafka"] = stack.enter_context(TansuServer()).bootstrap
        for index in range(args.rounds):
            for point in points:
                if point.key in failures:
                    continue
                t0 = time.perf_counter()
                try:
                    result = run_point(point, servers, args.point_timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    failures[point.key] = str(exc)
                    log(f"[round {index + 1}/{args.rounds}] {point.key}: FAILED: {exc}")
                    continue
                runs[point.key].append(result)
                figure = (
                    f"{result['events_per_s']:,.0f} events/s, {result['cpu_us_per_event']:,.1f} µs/event"
                    if "events_per_s" in result
                    else f"RSS {result['rss_kib']:,.0f} KiB"
                )
                took = time.perf_counter() - t0
                log(f"[round {index + 1}/{args.rounds}] {point.key}: {figure} ({took:.1f} s)")
    rows = summarize(points, runs)
    report = {
        "config": {"rounds": args.rounds, "smoke": args.smoke, "handler_sleep_s": HANDLER_SLEEP},
        "rows": rows,
        "memory": memory_sizing(rows),
        "failures": failures,
        "per_round": runs,
        "seconds": time.perf_counter() - started,
    }
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plots:
        for path in plot(report, Path(args.plots)):
            log(f"wrote {path}")
    log(f"{report['seconds']:.0f} s in all")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated series (default: all of {', '.join(SERIES)})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny N, one round: checks the harness runs")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH")
    parser.add_argument("--plots", metavar="DIR", help="write one PNG per series to DIR (needs matplotlib)")
    parser.add_argument("--point-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--consumer", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--publish-backlog", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--kafka", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    servers = {k: v for k, v in (("redis", args.redis_url), ("kafka", args.kafka)) if v}
    if args.point:
        point_main(args)
        return 0
    if args.consumer:
        from contenders import quiet_logs

        quiet_logs()
        transport, topic, group, events = args.consumer
        asyncio.run(consumer(transport, servers, topic, group, int(events)))
        return 0
    if args.publish_backlog:
        topic, count = args.publish_backlog
        asyncio.run(publish_backlog(topic, int(count), args.redis_url))
        return 0
    series = [s.strip() for s in (args.only or ",".join(SERIES)).split(",") if s.strip()]
    unknown = [s for s in series if s not in SERIES]
    if unknown:
        parser.error(f"unknown series: {', '.join(unknown)} (known: {', '.join(SERIES)})")
    if args.smoke:
        args.rounds, args.point_timeout = 1, 60.0
    return orchestrate(args, plan(series, args.smoke))


if __name__ == "__main__":
    sys.exit(main())
