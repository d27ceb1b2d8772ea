"""Benchmark workloads: what ``dotmac-events bench`` and ``benchmarks/run.py`` measure.

Every contender (this bus on a transport, a raw client, another framework) is wrapped
in a :class:`Contender` and driven by the same workloads, so the figures compare like
with like. Each event is a ~200-byte JSON order with two user headers and a key.

- ``e2e``: a consumer group subscribes, N events are published, and the clock stops
  when the handler has seen all N (each acknowledged after its handler returned).
  Once with ``publish`` (one event per await) and once with ``publish_many``
  (batches); events/s counts from the first publish to the last handled event.
- ``publish``: publishing alone, nobody consuming.
- ``consume``: N events are published first, then a new group reads that backlog
  (``start_from="earliest"``); events/s counts from the first handled event to the
  last, so joining a group is not part of it.
- ``ping-pong``: one event at a time; latency from the call to publish until the
  handler runs.
- ``open-loop``: events sent at a fixed rate; latency from the *scheduled* send time,
  so a publisher that falls behind shows up as latency instead of hiding it.

Client CPU is ``time.process_time`` (publisher and consumer share the process) per
event; peak RSS is the process's high-water mark (``resource.getrusage``).
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import math
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

from .config import create_bus, redact_url
from .event import Event
from .options import ConsumerOptions
from .transport import StartFrom

__all__ = [
    "HEADERS",
    "WORKLOADS",
    "BenchError",
    "BusContender",
    "Contender",
    "Progress",
    "bench_url",
    "app_overhead",
    "format_app_overhead",
    "format_report",
    "order_payload",
    "peak_rss_mb",
    "percentile",
    "run_workloads",
    "summarize_rounds",
]

# Two user headers, as a service would typically attach (where it came from, which schema).
HEADERS: Mapping[str, str] = {"x-origin": "checkout-service", "x-schema": "order.v1"}

PayloadHandler = Callable[[dict[str, Any]], None]
Stop = Callable[[], Awaitable[None]]

WORKLOADS = (
    "e2e_publish",
    "e2e_batch",
    "publish",
    "publish_batch",
    "consume",
    "pingpong",
    "open_loop",
)
LABELS = {
    "e2e_publish": "end to end, publish",
    "e2e_batch": "end to end, publish_many",
    "publish": "publish only, publish",
    "publish_batch": "publish only, publish_many",
    "consume": "consume only (backlog)",
    "pingpong": "latency, ping-pong",
    "open_loop": "latency, open loop",
}
READY_SEQ = -1


class BenchError(RuntimeError):
    """A workload did not complete (events missing after the timeout, a contender failed)."""


def order_payload(seq: int) -> dict[str, Any]:
    """The benchmark event: an order of about 200 bytes as compact JSON."""
    return {
        "order_id": seq,
        "customer_id": f"customer-{seq % 64:04d}",
        "sku": "SKU-4711-XL",
        "quantity": 1 + seq % 5,
        "unit_price": "19.99",
        "currency": "EUR",
        "created_at": "2026-01-15T10:30:00Z",
        "shipping": {"country": "DE", "postcode": "10115"},
    }


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def peak_rss_mb() -> float | None:
    """The process's peak resident set size in MiB (``None`` where unsupported)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Contender(abc.ABC):
    """One way of moving the benchmark events: this bus, a raw client, a framework.

    ``subscribe`` joins consumer group ``group`` on ``topic`` and calls
    ``on_payload`` with each decoded payload; the contender acknowledges the event
    after ``on_payload`` returned. It returns a coroutine function that stops the
    subscription. ``earliest`` asks a new group to start at the beginning of the
    topic (the workloads use a fresh topic each time, so this is only the backlog).
    """

    name: str = "contender"
    can_batch: bool = True
    can_replay: bool = True

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once before the workloads."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every connection and task."""

    async def prepare(self, topic: str) -> None:  # noqa: B027 - optional hook
        """Create ``topic`` if the broker needs that done first (not timed)."""

    @abc.abstractmethod
    async def subscribe(self, topic: str, group: str, on_payload: PayloadHandler, *, earliest: bool) -> Stop:
        """Consume ``topic`` in ``group``; return once consuming (or about to)."""

    @abc.abstractmethod
    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Publish one event and return once the broker accepted it."""

    async def publish_batch(self, topic: str, payloads: Sequence[dict[str, Any]]) -> None:
        """Publish several events the contender's batched way."""
        for payload in payloads:
            await self.publish(topic, payload)


class BusContender(Contender):
    """This event bus, built from ``url`` (or any argument :func:`create_bus` takes)."""

    def __init__(self, url: Any, *, name: str | None = None, **bus_kwargs: Any) -> None:
        self.url = url
        self.bus_kwargs = bus_kwargs
        self.name = name or "dotmac-events"
        self.bus: Any = None

    async def start(self) -> None:
        bus = create_bus(self.url, **self.bus_kwargs)
        await bus.start()
        self.bus = bus
        self.can_batch = True
        self.can_replay = bus.capabilities.replay_backlog

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()

    async def subscribe(self, topic: str, group: str, on_payload: PayloadHandler, *, earliest: bool) -> Stop:
        async def handle(event: Event) -> None:
            on_payload(event.payload)

        start_from: StartFrom = "earliest" if earliest and self.can_replay else "latest"
        sub = await self.bus.subscribe(
            topic, handle, group=group, options=ConsumerOptions(start_from=start_from)
        )
        stop: Stop = sub.stop
        return stop

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.bus.publish(
            Event(topic=topic, payload=payload, key=payload["customer_id"], headers=HEADERS)
        )

    async def publish_batch(self, topic: str, payloads: Sequence[dict[str, Any]]) -> None:
        await self.bus.publish_many(
            [Event(topic=topic, payload=p, key=p["customer_id"], headers=HEADERS) for p in payloads]
        )


class Progress:
    """Shows what is running and how far it got (on a terminal), one line per result."""

    def __init__(self, stream: TextIO | None = None, *, prefix: str = "", notes: bool = True) -> None:
        self.stream = stream
        self.live = bool(stream is not None and stream.isatty())
        self.prefix = prefix
        self.notes = notes
        self.label = ""
        self.total = 0
        self._count: Callable[[], int] = lambda: 0
        self._task: asyncio.Task[None] | None = None

    def phase(self, label: str, total: int, count: Callable[[], int]) -> None:
        self.label, self.total, self._count = label, total, count
        if self.live and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._render())

    def note(self, text: str) -> None:
        if self.stream is None or not self.notes:
            return
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self.prefix}{text}\n")
        self.stream.flush()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            if self.stream is not None:
                self.stream.write("\r\033[K")
                self.stream.flush()

    async def _render(self) -> None:
        assert self.stream is not None
        while True:
            done = min(self._count(), self.total)
            width = 24
            filled = int(width * done / max(self.total, 1))
            self.stream.write(
                f"\r\033[K{self.prefix}{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                f"{done:,}/{self.total:,}"
            )
            self.stream.flush()
            await asyncio.sleep(0.1)  # redraw interval


class _Tally:
    """The handler of the throughput workloads: counts distinct events, notes first and last."""

    __slots__ = ("count", "cpu_first", "done", "duplicates", "first", "last", "ready", "seen", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = bytearray(target)
        self.count = 0
        self.duplicates = 0
        self.first = 0.0
        self.cpu_first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()
        self.ready = asyncio.Event()

    def __call__(self, payload: dict[str, Any]) -> None:
        seq = payload["order_id"]
        if seq < 0:
            self.ready.set()
            return
        if self.seen[seq]:
            self.duplicates += 1  # at-least-once: a redelivery is allowed, not counted twice
            return
        self.seen[seq] = 1
        self.count += 1
        if self.count == 1:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()
        if self.count == self.target:
            self.last = time.perf_counter()
            self.done.set()


def _timeout(events: int) -> float:
    # Generous: the slowest contender in the comparison manages about 1,000 events/s.
    return 60.0 + events / 200.0


async def _wait(event: asyncio.Event, timeout: float, what: str, seen: Callable[[], str]) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        raise BenchError(f"{what}: not complete after {timeout:.0f}s ({seen()})") from None


async def _until_ready(contender: Contender, topic: str, ready: asyncio.Event) -> None:
    """Publish a marker until the handler sees it: the subscription is really consuming."""
    deadline = time.monotonic() + 60.0
    while not ready.is_set():
        await contender.publish(topic, order_payload(READY_SEQ))
        try:
            await asyncio.wait_for(ready.wait(), 0.5)
        except asyncio.TimeoutError:
            if time.monotonic() > deadline:
                raise BenchError(f"{contender.name}: the subscription to {topic} never started") from None


STOP_TIMEOUT = 20.0


async def _stop(stop: Stop, name: str) -> None:
    """Stop a subscription, turning a hang into an error that says where it happened."""
    try:
        await asyncio.wait_for(stop(), STOP_TIMEOUT)
    except asyncio.TimeoutError:
        raise BenchError(f"{name}: a subscription did not stop within {STOP_TIMEOUT:.0f}s") from None


def _rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else math.inf


async def _publish_all(
    contender: Contender, topic: str, events: int, batch_size: int | None, progress: _Counter
) -> None:
    if batch_size is None:
        publish = contender.publish
        for seq in range(events):
            await publish(topic, order_payload(seq))
            progress.n = seq + 1
    else:
        for start in range(0, events, batch_size):
            end = min(events, start + batch_size)
            await contender.publish_batch(topic, [order_payload(seq) for seq in range(start, end)])
            progress.n = end


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


async def _e2e(
    contender: Contender, names: _Names, events: int, batch_size: int | None, progress: Progress, label: str
) -> dict[str, Any]:
    topic, group = names.topic(label), names.group(label)
    await contender.prepare(topic)
    tally = _Tally(events)
    stop = await contender.subscribe(topic, group, tally, earliest=True)
    try:
        await _until_ready(contender, topic, tally.ready)
        progress.phase(LABELS.get(label, label), events, lambda: tally.count)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await _publish_all(contender, topic, events, batch_size, _Counter())
        await _wait(
            tally.done,
            _timeout(events),
            f"{contender.name} {label}",
            lambda: f"{tally.count} of {events} seen",
        )
        cpu = time.process_time() - cpu0
        seconds = tally.last - t0
    finally:
        await _stop(stop, contender.name)
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": _rate(events, seconds),
        "cpu_us_per_event": cpu / events * 1e6,
        "duplicates": tally.duplicates,
    }


async def _publish_only(
    contender: Contender, names: _Names, events: int, batch_size: int | None, progress: Progress, label: str
) -> dict[str, Any]:
    topic = names.topic(label)
    await contender.prepare(topic)
    counter = _Counter()
    progress.phase(LABELS[label], events, lambda: counter.n)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await _publish_all(contender, topic, events, batch_size, counter)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": _rate(events, seconds),
        "cpu_us_per_event": cpu / events * 1e6,
    }


async def _consume_only(
    contender: Contender, names: _Names, events: int, batch_size: int, progress: Progress, label: str
) -> dict[str, Any]:
    topic, group = names.topic(label), names.group(label)
    await contender.prepare(topic)
    counter = _Counter()
    progress.phase("consume only: publishing the backlog", events, lambda: counter.n)
    await _publish_all(contender, topic, events, batch_size if contender.can_batch else None, counter)
    tally = _Tally(events)
    progress.phase(LABELS[label], events, lambda: tally.count)
    stop = await contender.subscribe(topic, group, tally, earliest=True)
    try:
        await _wait(
            tally.done,
            _timeout(events),
            f"{contender.name} {label}",
            lambda: f"{tally.count} of {events} seen",
        )
        cpu = time.process_time() - tally.cpu_first
        seconds = tally.last - tally.first
    finally:
        await _stop(stop, contender.name)
    # The first event starts the clock, so N - 1 events fill the measured interval.
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": _rate(events - 1, seconds),
        "cpu_us_per_event": cpu / max(events - 1, 1) * 1e6,
        "duplicates": tally.duplicates,
    }


def _latency_summary(latencies: list[float]) -> dict[str, Any]:
    values = sorted(latencies)
    return {
        "samples": len(values),
        "p50_ms": percentile(values, 50) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "p999_ms": percentile(values, 99.9) * 1e3,
        "max_ms": values[-1] * 1e3 if values else math.nan,
        "mean_ms": statistics.fmean(values) * 1e3 if values else math.nan,
    }


class _Stamps:
    """Handler of the latency workloads: notes when each event reached it."""

    __slots__ = ("arrived", "count", "done", "ready", "target", "wake")

    def __init__(self, target: int) -> None:
        self.target = target
        self.arrived = [0.0] * target
        self.count = 0
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.wake = asyncio.Event()

    def __call__(self, payload: dict[str, Any]) -> None:
        now = time.perf_counter()
        seq = payload["order_id"]
        if seq < 0:
            self.ready.set()
            return
        if self.arrived[seq]:
            return
        self.arrived[seq] = now
        self.count += 1
        self.wake.set()
        if self.count == self.target:
            self.done.set()


async def _pingpong(contender: Contender, names: _Names, samples: int, progress: Progress) -> dict[str, Any]:
    topic, group = names.topic("pingpong"), names.group("pingpong")
    await contender.prepare(topic)
    stamps = _Stamps(samples)
    stop = await contender.subscribe(topic, group, stamps, earliest=True)
    latencies: list[float] = []
    try:
        await _until_ready(contender, topic, stamps.ready)
        progress.phase(LABELS["pingpong"], samples, lambda: stamps.count)
        timeout = 30.0
        for seq in range(samples):
            stamps.wake.clear()
            sent = time.perf_counter()
            await contender.publish(topic, order_payload(seq))
            while not stamps.arrived[seq]:
                try:
                    await asyncio.wait_for(stamps.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    raise BenchError(
                        f"{contender.name} ping-pong: event {seq} not seen after {timeout}s"
                    ) from None
                stamps.wake.clear()
            latencies.append(stamps.arrived[seq] - sent)
    finally:
        await _stop(stop, contender.name)
    return _latency_summary(latencies)


async def _open_loop(
    contender: Contender, names: _Names, samples: int, rate: float, progress: Progress
) -> dict[str, Any]:
    topic, group = names.topic("open_loop"), names.group("open_loop")
    await contender.prepare(topic)
    stamps = _Stamps(samples)
    stop = await contender.subscribe(topic, group, stamps, earliest=True)
    try:
        await _until_ready(contender, topic, stamps.ready)
        progress.phase(f"{LABELS['open_loop']} at {rate:,.0f}/s", samples, lambda: stamps.count)
        interval = 1.0 / rate
        start = time.perf_counter() + 0.01
        behind = 0
        for seq in range(samples):
            scheduled = start + seq * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind += 1
            await contender.publish(topic, order_payload(seq))
        finished = time.perf_counter()
        await _wait(
            stamps.done,
            _timeout(samples),
            f"{contender.name} open loop",
            lambda: f"{stamps.count} of {samples} seen",
        )
    finally:
        await _stop(stop, contender.name)
    latencies = [stamps.arrived[seq] - (start + seq * interval) for seq in range(samples)]
    summary = _latency_summary(latencies)
    summary["rate"] = rate
    summary["achieved_rate"] = _rate(samples, finished - start)
    summary["late_sends"] = behind
    return summary


class _Names:
    def __init__(self, contender: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in contender)[:40]
        self.base = f"bench.{safe}.{uuid.uuid4().hex[:10]}"

    def topic(self, workload: str) -> str:
        return f"{self.base}.{workload}"

    def group(self, workload: str) -> str:
        return f"{self.base}.{workload}.g"


async def run_workloads(
    contender: Contender,
    *,
    events: int,
    batch_size: int = 500,
    latency_samples: int = 2000,
    rate: float = 1000.0,
    workloads: Sequence[str] = WORKLOADS,
    warmup: int = 1000,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``workloads`` against a started ``contender``; results keyed by workload.

    Workloads the contender cannot do (``publish_many`` without batching, a backlog
    without replay) are left out of the result.
    """
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        raise ValueError(f"unknown workloads: {', '.join(sorted(unknown))}")
    if events < 2:
        raise ValueError("events must be at least 2")
    progress = progress or Progress(None)
    names = _Names(contender.name)
    results: dict[str, dict[str, Any]] = {}
    if warmup > 0:
        # Connections, caches and first-use imports settle outside the measurements.
        await _e2e(contender, names, min(warmup, events), None, Progress(None), "warmup")
    for workload in workloads:
        if workload in ("e2e_batch", "publish_batch") and not contender.can_batch:
            continue
        if workload == "consume" and not contender.can_replay:
            continue
        if workload == "e2e_publish":
            result = await _e2e(contender, names, events, None, progress, workload)
        elif workload == "e2e_batch":
            result = await _e2e(contender, names, events, batch_size, progress, workload)
        elif workload == "publish":
            result = await _publish_only(contender, names, events, None, progress, workload)
        elif workload == "publish_batch":
            result = await _publish_only(contender, names, events, batch_size, progress, workload)
        elif workload == "consume":
            result = await _consume_only(contender, names, events, batch_size, progress, workload)
        elif workload == "pingpong":
            result = await _pingpong(contender, names, min(latency_samples, events), progress)
        else:
            result = await _open_loop(contender, names, min(latency_samples, events), rate, progress)
        results[workload] = result
        progress.note(f"{contender.name}: {LABELS[workload]}: {_short(result)}")
    return results


def _short(result: Mapping[str, Any]) -> str:
    if "events_per_s" in result:
        return f"{result['events_per_s']:,.0f} events/s, {result['cpu_us_per_event']:.1f} µs CPU/event"
    return f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, p99.9 {result['p999_ms']:.3f} ms"


def summarize_rounds(rounds: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median of every numeric figure over the rounds, per workload."""
    summary: dict[str, dict[str, Any]] = {}
    workloads = [w for w in WORKLOADS if any(w in r for r in rounds)]
    for workload in workloads:
        entries = [r[workload] for r in rounds if workload in r]
        merged: dict[str, Any] = {"rounds": len(entries)}
        for key in entries[0]:
            values = [e[key] for e in entries if isinstance(e.get(key), (int, float))]
            if values:
                merged[key] = statistics.median(values)
        if "events_per_s" in merged:
            rates = [e["events_per_s"] for e in entries]
            merged["spread"] = (
                (max(rates) - min(rates)) / merged["events_per_s"] if merged["events_per_s"] else 0
            )
        summary[workload] = merged
    return summary


async def bench_url(
    url: str,
    *,
    events: int | None = None,
    rounds: int = 3,
    batch_size: int = 500,
    latency_samples: int = 2000,
    rate: float = 1000.0,
    workloads: Sequence[str] = WORKLOADS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Benchmark this bus on ``url``: every workload ``rounds`` times, medians reported.

    ``events`` defaults to 200,000 in-process (``memory://``) and 50,000 otherwise.
    A ``memory://`` bus keeps at least ``events`` events so the backlog workload fits.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    progress = progress or Progress(None)
    probe = create_bus(url)
    in_process = probe.transport.name == "memory"
    await probe.close()
    if events is None:
        events = 200_000 if in_process else 50_000
    target: Any = url
    if in_process and getattr(getattr(probe.transport, "config", None), "retention", events) < events:
        target = {"url": url, "retention": events}
    per_round: list[dict[str, dict[str, Any]]] = []
    started = time.perf_counter()
    try:
        for index in range(rounds):
            progress.prefix = f"[round {index + 1}/{rounds}] " if rounds > 1 else ""
            contender = BusContender(target, name=f"dotmac-events/{probe.transport.name}")
            await contender.start()
            try:
                per_round.append(
                    await run_workloads(
                        contender,
                        events=events,
                        batch_size=batch_size,
                        latency_samples=latency_samples,
                        rate=rate,
                        workloads=workloads,
                        progress=progress,
                    )
                )
            finally:
                await contender.close()
    finally:
        await progress.aclose()
    return {
        "url": redact_url(url),
        "transport": probe.transport.name,
        "events": events,
        "rounds": rounds,
        "batch_size": batch_size,
        "latency_samples": min(latency_samples, events),
        "rate": rate,
        "seconds": time.perf_counter() - started,
        "python": sys.version.split()[0],
        "peak_rss_mb": peak_rss_mb(),
        "results": summarize_rounds(per_round),
        "per_round": per_round,
    }


def format_report(report: Mapping[str, Any]) -> str:
    """The table ``dotmac-events bench`` prints."""
    results: Mapping[str, Mapping[str, Any]] = report["results"]
    lines = [
        f"dotmac-events bench: {report['transport']} ({report['url']}), {report['events']:,} events, "
        f"median of {report['rounds']} round(s)",
    ]
    header = f"{'workload':<28} {'events/s':>10} {'CPU µs/ev':>10} {'spread':>7}"
    lines += [header, "-" * len(header)]
    for workload in ("e2e_publish", "e2e_batch", "publish", "publish_batch", "consume"):
        r = results.get(workload)
        if r is None:
            lines.append(f"{LABELS[workload]:<28} {'n/a':>10}")
            continue
        lines.append(
            f"{LABELS[workload]:<28} {r['events_per_s']:>10,.0f} {r['cpu_us_per_event']:>10.1f} "
            f"{r.get('spread', 0):>6.0%}"
        )
    header = f"{'latency':<28} {'p50 ms':>10} {'p99 ms':>10} {'p99.9 ms':>10} {'samples':>8}"
    lines += ["", header, "-" * len(header)]
    for workload in ("pingpong", "open_loop"):
        r = results.get(workload)
        if r is None:
            continue
        label = LABELS[workload] + (f" @{report['rate']:,.0f}/s" if workload == "open_loop" else "")
        cells = " ".join(f"{r[k]:>10.3f}" for k in ("p50_ms", "p99_ms", "p999_ms"))
        lines.append(f"{label:<28} {cells} {r['samples']:>8.0f}")
    rss = report.get("peak_rss_mb")
    lines += ["", f"peak RSS {rss:,.0f} MiB, {report['seconds']:.1f} s in all" if rss else ""]
    return "\n".join(lines).rstrip() + "\n"


# -- the app layer's own cost ----------------------------------------------------------------
APP_CONFIGS = ("bus", "app-event", "app-attrs", "app-attrs-mw", "app-pydantic")
APP_LABELS = {
    "bus": "bus.subscribe, async handler(event)",
    "app-event": "App subscriber, handler(event: Event)",
    "app-attrs": "App subscriber, attrs payload (nested)",
    "app-attrs-mw": "App subscriber, attrs payload + correlation_id middleware",
    "app-pydantic": "App subscriber, pydantic model payload",
}


async def _app_round(config: str, events: int, batch: int) -> float:
    """CPU seconds per event of one round of ``config`` (publishing and handling)."""
    from .app import App, correlation_id
    from .bus import EventBus

    done = asyncio.Event()
    count = 0

    def seen() -> None:
        nonlocal count
        count += 1
        if count == events:
            done.set()

    async def on_event(event: Event) -> None:
        seen()

    async def on_order(order: Any) -> None:
        seen()

    url = f"memory://bench-app-{uuid.uuid4().hex[:8]}"
    app = App(url)
    if config in ("app-attrs", "app-attrs-mw"):
        on_order.__annotations__["order"] = _bench_order_class()
    elif config == "app-pydantic":
        on_order.__annotations__["order"] = _bench_pydantic_class()
    if config == "app-event":
        app.subscriber("bench.app", group="bench")(on_event)
    elif config != "bus":
        middlewares = [correlation_id] if config == "app-attrs-mw" else []
        app.subscriber("bench.app", group="bench", middlewares=middlewares)(on_order)
    bus: EventBus
    async with app:
        bus = app.bus
        if config == "bus":
            await bus.subscribe("bench.app", on_event, group="bench")
        payloads = [order_payload(i) for i in range(batch)]
        cpu = time.process_time()
        for start in range(0, events, batch):
            await bus.publish_many(
                [
                    Event(topic="bench.app", payload=payloads[i - start], key=str(i % 16))
                    for i in range(start, min(events, start + batch))
                ]
            )
        await _wait(done, _timeout(events), f"{config}: {events} events", lambda: f"{count} handled")
        return (time.process_time() - cpu) / events


def _bench_order_class() -> type:
    from attrs import frozen

    @frozen
    class Shipping:
        country: str
        postcode: str

    @frozen
    class Order:
        order_id: int
        customer_id: str
        sku: str
        quantity: int
        unit_price: str
        currency: str
        created_at: str
        shipping: Shipping

    Order.__annotations__["shipping"] = Shipping  # local classes: no module name to resolve
    return Order


def _bench_pydantic_class() -> type:
    import pydantic

    class Shipping(pydantic.BaseModel):
        country: str
        postcode: str

    class Order(pydantic.BaseModel):
        order_id: int
        customer_id: str
        sku: str
        quantity: int
        unit_price: str
        currency: str
        created_at: str
        shipping: Shipping

    return Order


async def _call_costs(configs: Sequence[str], calls: int, repeats: int) -> dict[str, float]:
    """Seconds per call of each configuration's handler path alone (no transport), best repeat.

    ``bus`` is the plain handler; the others are the call an App hands to
    ``bus.subscribe``: in-flight count, context variable, structuring, middleware.
    """
    from .app import App, correlation_id
    from .app._app import _Binding

    async def plain(event: Event) -> None:
        return None

    async def typed(order: Any) -> None:
        return None

    paths: dict[str, Callable[[Event], Awaitable[Any]]] = {}
    for config in configs:
        if config == "bus":
            paths[config] = plain
            continue
        app = App("memory://")
        if config == "app-event":
            app.subscriber("bench.app")(plain)
        else:
            handler = _copy_function(typed)
            handler.__annotations__["order"] = (
                _bench_pydantic_class() if config == "app-pydantic" else _bench_order_class()
            )
            middlewares = [correlation_id] if config == "app-attrs-mw" else []
            app.subscriber("bench.app", middlewares=middlewares)(handler)
        paths[config] = app._build_call(_Binding(app.subscribers[0]))
    event = Event(topic="bench.app", payload=order_payload(1), key="1")
    best: dict[str, float] = {}
    for _ in range(repeats):
        for config, call in paths.items():
            started = time.perf_counter()
            for _ in range(calls):
                await call(event)
            cost = (time.perf_counter() - started) / calls
            best[config] = min(best.get(config, cost), cost)
    return best


def _copy_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    import types

    assert isinstance(fn, types.FunctionType)
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__annotations__ = dict(fn.__annotations__)
    return copy


async def app_overhead(
    *, events: int = 20_000, rounds: int = 5, batch: int = 500, configs: Sequence[str] = APP_CONFIGS
) -> dict[str, Any]:
    """Per-event cost of the app layer over a plain ``bus.subscribe`` handler, on memory://.

    Every configuration runs in this process, rounds interleaved; the figure is CPU
    time per event (publishing included, which is the same for all), best round.
    ``app-pydantic`` is skipped when pydantic is not installed.
    """
    wanted = [c for c in configs if c != "app-pydantic" or importlib.util.find_spec("pydantic") is not None]
    unknown = set(wanted) - set(APP_CONFIGS)
    if unknown:
        raise BenchError(f"unknown app configs: {', '.join(sorted(unknown))}")
    for config in wanted:  # warm-up: imports and first-use caches stay out of the rounds
        await _app_round(config, min(events, 1000), batch)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for config in wanted:
            cost = await _app_round(config, events, batch)
            best[config] = min(best.get(config, cost), cost)
    calls = await _call_costs(wanted, max(1000, events // 2), max(3, rounds))
    base = best.get("bus")
    call_base = calls.get("bus")
    return {
        "events": events,
        "rounds": rounds,
        "results": {
            c: {
                "us_per_event": round(best[c] * 1e6, 2),
                "vs_bus": round(best[c] / base, 3) if base else None,
                "handler_path_us": round(calls[c] * 1e6, 3),
                "added_us": round((calls[c] - call_base) * 1e6, 3) if call_base is not None else None,
            }
            for c in wanted
        },
    }


def format_app_overhead(report: Mapping[str, Any]) -> str:
    lines = [
        f"memory://, {report['events']} events per round, {report['rounds']} rounds, best round",
        "e2e: CPU us per event, publish + handle; path: us per call of the handler path alone",
        f"{'configuration':<58} {'e2e us':>7} {'vs bus':>7} {'path us':>8} {'added':>7}",
    ]
    for config, row in report["results"].items():
        ratio = "-" if row["vs_bus"] is None else f"{row['vs_bus']:.2f}x"
        added = "-" if row["added_us"] is None else f"{row['added_us']:+.2f}"
        lines.append(
            f"{APP_LABELS[config]:<58} {row['us_per_event']:>7.2f} {ratio:>7} "
            f"{row['handler_path_us']:>8.2f} {added:>7}"
        )
    return "\n".join(lines) + "\n"
