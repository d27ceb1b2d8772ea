"""What observers cost per event on memory://.

Each configuration runs in its own interpreter (the plugin set is chosen by
environment variables at load time), rounds are interleaved so that machine noise
hits every configuration alike, and the median of the rounds is reported:

  none         no observer plugin loaded (DOTMAC_EVENTS_LOAD_PLUGINS=memory)
  otel-off     dotmac-events-otel installed but DOTMAC_EVENTS_OTEL=off
  otel-noop    the plugin on, no OpenTelemetry SDK (the API's no-op providers)
  otel-sdk     the plugin on with SDK providers (spans and metrics recorded, not exported)
  prometheus   the core's Prometheus hooks on a CollectorRegistry, no OTel plugin

A round publishes ``--events`` events one by one and waits until one subscription
handled them all. The workload is one asyncio thread, so events per CPU second of the
process (best round) is the figure compared, as it barely moves with other load on
the machine; the median wall-clock rate is shown beside it. The ratio compares with
``none``: ``otel-off`` should be indistinguishable from it (within noise), since a
bus resolves observers once at start and a disabled plugin registers no hook.

    python benchmarks/observer_overhead.py --events 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS: dict[str, dict[str, str]] = {
    "none": {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory"},
    "otel-off": {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory,otel", "DOTMAC_EVENTS_OTEL": "off"},
    "otel-noop": {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory,otel", "DOTMAC_EVENTS_OTEL": "on"},
    "otel-sdk": {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory,otel", "DOTMAC_EVENTS_OTEL": "on"},
    "prometheus": {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory"},
}


def _install_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    # Spans are recorded and ended, then dropped: no exporter cost is measured.
    trace.set_tracer_provider(TracerProvider())
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


async def _round(config: str, events: int) -> dict[str, Any]:
    from dotmac.events import Event, create_bus

    observers: list[object] = []
    if config == "prometheus":
        from prometheus_client import CollectorRegistry

        from dotmac.events import create_dotmac_observability_hooks

        observers.append(create_dotmac_observability_hooks(metrics_registry=CollectorRegistry()))
    done = asyncio.Event()
    handled = 0

    async def handle(event: Event) -> None:
        nonlocal handled
        handled += 1
        if handled == events:
            done.set()

    async with create_bus(f"memory://bench-{config}", observers=observers) as bus:
        await bus.subscribe("bench.events", handle, group="bench")
        payload = {"id": 1, "name": "order", "amount": 12.5}
        started = time.perf_counter()
        cpu_started = time.process_time()
        for i in range(events):
            await bus.publish(Event(topic="bench.events", payload=payload, key=str(i % 16)))
        await done.wait()
        cpu = time.process_time() - cpu_started
        elapsed = time.perf_counter() - started
        observed = bus._observers.any
    return {
        "config": config,
        "events_per_s": events / elapsed,
        "events_per_cpu_s": events / cpu,
        "observed": observed,
    }


def worker(config: str, events: int) -> None:
    if config == "otel-sdk":
        _install_sdk()
    # A short warm-up so imports and first-use caches stay out of the measurement.
    asyncio.run(_round(config, min(events, 1000)))
    print(json.dumps(asyncio.run(_round(config, events))))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.events)
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs: {', '.join(sorted(unknown))}")
    wall: dict[str, list[float]] = {c: [] for c in configs}
    cpu: dict[str, list[float]] = {c: [] for c in configs}
    observed: dict[str, bool] = {}
    for r in range(args.rounds):
        for config in configs:
            env = {**os.environ, **CONFIGS[config]}
            env.pop("DOTMAC_EVENTS_DISABLE_PLUGIN_AUTOLOAD", None)
            if config != "otel-off":
                env.setdefault("DOTMAC_EVENTS_OTEL", "on")
            out = subprocess.run(
                [sys.executable, __file__, "--worker", config, "--events", str(args.events)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                sys.exit(f"{config} failed:\n{out.stderr}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            wall[config].append(result["events_per_s"])
            cpu[config].append(result["events_per_cpu_s"])
            observed[config] = result["observed"]
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = max(cpu["none"]) if "none" in cpu else None
    print(f"memory://, {args.events} events per round, {args.rounds} rounds")
    print("cpu: events per CPU second of the process, best round (robust to other load)")
    print("wall: events per wall-clock second, median round")
    print(f"{'config':<12} {'observers':>9} {'cpu':>8} {'vs none':>8} {'wall':>8} {'spread':>7}")
    for config in configs:
        best = max(cpu[config])
        median = statistics.median(wall[config])
        spread = (max(wall[config]) - min(wall[config])) / median if median else 0.0
        ratio = f"{best / base:.3f}" if base else "-"
        seen = "yes" if observed[config] else "no"
        print(f"{config:<12} {seen:>9} {best:>8.0f} {ratio:>8} {median:>8.0f} {spread:>6.0%}")


if __name__ == "__main__":
    main()
