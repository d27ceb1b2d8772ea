"""This bus against the raw clients and FastStream, side by side in one run.

Every contender runs the same workloads (``dotmac.events.bench``): a ~200-byte JSON
order with two headers and a key; end to end through a consumer group with
acknowledgement after the handler (with ``publish`` and with ``publish_many`` /
pipelining / batches), publish only, consume only (a backlog), client CPU per event,
peak RSS, and ping-pong and open-loop latency.

A private redis-server and a Tansu broker start on free ports for the run and are
stopped at its end. Each contender runs in a fresh interpreter per round (so peak RSS
and CPU are its own), rounds are interleaved so that machine noise hits every
contender alike, and medians are reported with ratios against the raw client and
FastStream and the project's targets.

    python benchmarks/run.py                       # 50,000 events (200,000 in-process), 3 rounds
    python benchmarks/run.py --only bus-redis,redis-py --rounds 5
    python benchmarks/run.py --smoke               # tiny and quick, for CI: numbers mean nothing
    python benchmarks/run.py --json > results.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULT_MARK = "BENCH-RESULT "

ALL = ("e2e_publish", "e2e_batch", "publish", "publish_batch", "consume", "pingpong", "open_loop")
SINGLE = ("e2e_publish", "publish", "pingpong", "open_loop")
BATCHED = ("e2e_batch", "publish_batch", "consume")
E2E = ("e2e_publish", "e2e_batch")
THROUGHPUT = ("e2e_publish", "e2e_batch", "publish", "publish_batch")
LATENCY = ("pingpong", "open_loop")


@dataclass(frozen=True)
class Spec:
    name: str
    transport: str  # memory, redis or kafka
    label: str
    workloads: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


SPECS = [
    Spec("bus-memory", "memory", "dotmac-events memory://", ALL, {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory"}),
    Spec(
        "bus-memory-otel-off",
        "memory",
        "dotmac-events memory://, OTel plugin loaded but off",
        E2E,
        {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory,otel", "DOTMAC_EVENTS_OTEL": "off"},
        ("dotmac_events_otel",),
    ),
    Spec(
        "queue",
        "memory",
        "asyncio.Queue + orjson",
        ("e2e_publish", "publish", "consume", "pingpong", "open_loop"),
    ),
    Spec(
        "bus-redis",
        "redis",
        "dotmac-events redis://",
        ALL,
        {"DOTMAC_EVENTS_LOAD_PLUGINS": "redis"},
        ("dotmac_events_redis",),
    ),
    Spec("redis-py", "redis", "redis-py, one command per await", SINGLE, requires=("redis",)),
    Spec("redis-py-pipelined", "redis", "redis-py, pipelined", BATCHED, requires=("redis",)),
    Spec(
        "faststream-redis",
        "redis",
        "FastStream Redis Streams, ack after handler",
        ALL,
        requires=("faststream",),
    ),
    Spec(
        "bus-kafka",
        "kafka",
        "dotmac-events kafka://",
        ALL,
        {"DOTMAC_EVENTS_LOAD_PLUGINS": "kafka"},
        ("dotmac_events_kafka", "aiokafka"),
    ),
    Spec("aiokafka", "kafka", "aiokafka, commit after each batch", ALL, requires=("aiokafka",)),
    Spec("faststream-kafka", "kafka", "FastStream Kafka, commit per message", ALL, requires=("faststream",)),
    Spec(
        "faststream-kafka-autocommit",
        "kafka",
        "FastStream Kafka, auto-commit",
        E2E,
        requires=("faststream",),
    ),
]
BY_NAME = {s.name: s for s in SPECS}

# (what, contender, workload, baseline, workload of the baseline, kind, required)
# kind "ratio": contender / baseline >= required; "observer": the same, noise allowed.
TARGETS: list[tuple[str, str, str, str, str, str, float]] = [
    ("memory vs asyncio.Queue, publish", "bus-memory", "e2e_publish", "queue", "e2e_publish", "ratio", 0.5),
    (
        "memory vs asyncio.Queue, publish_many",
        "bus-memory",
        "e2e_batch",
        "queue",
        "e2e_publish",
        "ratio",
        0.5,
    ),
    ("redis vs redis-py, one per await", "bus-redis", "e2e_publish", "redis-py", "e2e_publish", "ratio", 0.8),
    (
        "redis vs redis-py, pipelined",
        "bus-redis",
        "e2e_batch",
        "redis-py-pipelined",
        "e2e_batch",
        "ratio",
        0.8,
    ),
    (
        "redis vs FastStream, publish",
        "bus-redis",
        "e2e_publish",
        "faststream-redis",
        "e2e_publish",
        "info",
        0,
    ),
    (
        "redis vs FastStream, batched",
        "bus-redis",
        "e2e_batch",
        "faststream-redis",
        "e2e_batch",
        "info",
        0,
    ),
    ("kafka vs aiokafka, one per await", "bus-kafka", "e2e_publish", "aiokafka", "e2e_publish", "ratio", 0.8),
    ("kafka vs aiokafka, batched", "bus-kafka", "e2e_batch", "aiokafka", "e2e_batch", "ratio", 0.8),
    (
        "kafka vs FastStream, publish",
        "bus-kafka",
        "e2e_publish",
        "faststream-kafka",
        "e2e_publish",
        "info",
        0,
    ),
    (
        "kafka vs FastStream, batched",
        "bus-kafka",
        "e2e_batch",
        "faststream-kafka",
        "e2e_batch",
        "info",
        0,
    ),
    (
        "kafka vs FastStream auto-commit, publish",
        "bus-kafka",
        "e2e_publish",
        "faststream-kafka-autocommit",
        "e2e_publish",
        "info",
        0,
    ),
    (
        "kafka vs FastStream auto-commit, batched",
        "bus-kafka",
        "e2e_batch",
        "faststream-kafka-autocommit",
        "e2e_batch",
        "info",
        0,
    ),
    # Each side at its best (publish or batched), the way a user would run it.
    ("redis vs FastStream, best of each", "bus-redis", "best", "faststream-redis", "best", "ratio", 5),
    ("kafka vs FastStream, best of each", "bus-kafka", "best", "faststream-kafka", "best", "ratio", 5),
    (
        "observers: OTel off vs absent, publish",
        "bus-memory-otel-off",
        "e2e_publish",
        "bus-memory",
        "e2e_publish",
        "observer",
        0.95,
    ),
    (
        "observers: OTel off vs absent, publish_many",
        "bus-memory-otel-off",
        "e2e_batch",
        "bus-memory",
        "e2e_batch",
        "observer",
        0.95,
    ),
]
# The second round's targets, same-run ratios: (what, contender, workload, key, base
# contender, base workload, limit). For events/s the ratio must reach the limit; for a
# latency the contender's value may be at most ``limit`` times the base's; a base of
# None compares the value itself with the limit (the core's CPU per event, µs).
ROUND_TWO: list[tuple[str, str, str, str, str | None, str, float]] = [
    (
        "memory e2e vs asyncio.Queue + orjson",
        "bus-memory",
        "e2e_publish",
        "events_per_s",
        "queue",
        "e2e_publish",
        0.3,
    ),
    (
        "core CPU per event, memory:// e2e (µs)",
        "bus-memory",
        "e2e_publish",
        "cpu_us_per_event",
        None,
        "",
        8.0,
    ),
    (
        "redis e2e pipelined vs redis-py pipelined",
        "bus-redis",
        "e2e_batch",
        "events_per_s",
        "redis-py-pipelined",
        "e2e_batch",
        0.8,
    ),
    ("kafka e2e batched vs aiokafka", "bus-kafka", "e2e_batch", "events_per_s", "aiokafka", "e2e_batch", 0.7),
    ("kafka consume only vs aiokafka", "bus-kafka", "consume", "events_per_s", "aiokafka", "consume", 0.5),
    (
        "kafka e2e one per await vs FastStream",
        "bus-kafka",
        "e2e_publish",
        "events_per_s",
        "faststream-kafka",
        "e2e_publish",
        1.0,
    ),
    (
        "kafka ping-pong p50 vs FastStream",
        "bus-kafka",
        "pingpong",
        "p50_ms",
        "faststream-kafka",
        "pingpong",
        1.0,
    ),
]
LATENCY_TARGETS = [
    ("memory", "bus-memory", "queue"),
    ("redis", "bus-redis", "redis-py"),
    ("kafka", "bus-kafka", "aiokafka"),
]


# -- worker: one contender, one round, in its own interpreter -----------------------------
def _make_contender(spec: Spec, args: argparse.Namespace, backlog: bool) -> Any:
    from contenders import (
        BusKafkaContender,
        FastStreamKafkaContender,
        FastStreamRedisContender,
        KafkaContender,
        QueueContender,
        RedisContender,
        bus_kafka_query,
    )

    from dotmac.events.bench import BusContender

    # In-process contenders keep a backlog for a new group only as long as their
    # retention: the consume-only worker keeps all N, the others the defaults.
    retention = max(args.events, 10_000) if backlog else 10_000
    if spec.name.startswith("bus-memory"):
        return BusContender(f"memory://bench?retention={retention}", name=spec.name)
    if spec.name == "queue":
        return QueueContender(retention=retention)
    if spec.name == "bus-redis":
        return BusContender(args.redis_url, name=spec.name)
    if spec.name in ("redis-py", "redis-py-pipelined"):
        return RedisContender(args.redis_url, batched=spec.name.endswith("pipelined"))
    if spec.name == "faststream-redis":
        return FastStreamRedisContender(args.redis_url)
    if spec.name == "bus-kafka":
        return BusKafkaContender(f"kafka://{args.kafka}?{bus_kafka_query()}", args.kafka, name=spec.name)
    if spec.name == "aiokafka":
        return KafkaContender(args.kafka)
    if spec.name.startswith("faststream-kafka"):
        return FastStreamKafkaContender(args.kafka, auto_commit=spec.name.endswith("autocommit"))
    raise SystemExit(f"unknown contender {spec.name}")


async def _worker(spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    from contenders import low_latency_kafka, quiet_logs

    from dotmac.events.bench import Progress, peak_rss_mb, run_workloads

    quiet_logs()
    events = {"memory": args.memory_events, "kafka": args.kafka_events}.get(spec.transport, args.events)
    args.events = events
    workloads = tuple(w for w in args.workloads.split(",") if w)
    if set(workloads) <= set(LATENCY):
        low_latency_kafka()
    contender = _make_contender(spec, args, backlog=workloads == ("consume",))
    started = time.perf_counter()
    progress = Progress(sys.stderr, prefix=args.prefix, notes=False)
    await contender.start()
    try:
        results = await run_workloads(
            contender,
            events=events,
            batch_size=args.batch_size,
            latency_samples=args.latency_samples,
            rate=args.rate,
            workloads=workloads,
            warmup=args.warmup,
            progress=progress,
        )
    finally:
        await progress.aclose()
        try:
            await asyncio.wait_for(contender.close(), 10)
        except asyncio.TimeoutError:
            print(f"{spec.name}: close() did not return within 10s", file=sys.stderr)
    return {
        "contender": spec.name,
        "events": events,
        "workloads": results,
        "peak_rss_mb": peak_rss_mb(),
        "seconds": time.perf_counter() - started,
    }


def worker_main(args: argparse.Namespace) -> None:
    spec = BY_NAME[args.worker]
    result = asyncio.run(_worker(spec, args))
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")


# -- orchestration ------------------------------------------------------------------------
def _available(spec: Spec) -> str | None:
    """None when the contender can run here, else why not."""
    for module in spec.requires:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    versions = {}
    for dist in ("dotmac-events", "redis", "hiredis", "aiokafka", "faststream", "orjson"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    info["versions"] = versions
    return info


def _run_worker(
    spec: Spec, args: argparse.Namespace, servers: Mapping[str, str], prefix: str
) -> dict[str, Any]:
    """One round of one contender, in up to three interpreters: throughput, latency
    (Kafka consumers then poll every 5 ms) and the backlog workload (whose N retained
    events would otherwise count in the peak RSS of the others). The RSS reported is
    that of the throughput workloads."""
    result: dict[str, Any] | None = None
    for group in (THROUGHPUT, LATENCY, ("consume",)):
        workloads = [w for w in spec.workloads if w in group]
        if not workloads:
            continue
        part = _run_one(spec, args, servers, prefix, workloads)
        if result is None:
            result = part
        else:
            result["workloads"].update(part["workloads"])
            result["seconds"] += part["seconds"]
    assert result is not None
    return result


def _run_one(
    spec: Spec, args: argparse.Namespace, servers: Mapping[str, str], prefix: str, workloads: list[str]
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        *worker_args(spec, args, servers, prefix, workloads),
    ]
    env = {**os.environ, **spec.env}
    env.setdefault("PYTHONHASHSEED", "0")
    out = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, text=True, check=False, timeout=args.worker_timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"{spec.name} failed with exit status {out.returncode} (its stderr is above)")
    return parse_result(spec.name, out.stdout)


def worker_args(
    spec: Spec, args: argparse.Namespace, servers: Mapping[str, str], prefix: str, workloads: Sequence[str]
) -> list[str]:
    """The command line of a worker running ``workloads`` of ``spec`` (after the script)."""
    argv = [
        "--worker",
        spec.name,
        "--workloads",
        ",".join(workloads),
        "--events",
        str(args.events),
        "--memory-events",
        str(args.memory_events),
        "--kafka-events",
        str(args.kafka_events),
        "--batch-size",
        str(args.batch_size),
        "--latency-samples",
        str(args.latency_samples),
        "--rate",
        str(args.rate),
        "--warmup",
        str(args.warmup),
        "--prefix",
        prefix,
    ]
    if "redis" in servers:
        argv += ["--redis-url", servers["redis"]]
    if "kafka" in servers:
        argv += ["--kafka", servers["kafka"]]
    return argv


def parse_result(name: str, stdout: str) -> dict[str, Any]:
    """The result line a worker printed last."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    raise RuntimeError(f"{name} printed no result")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    from dotmac.events.bench import summarize_rounds

    summary: dict[str, dict[str, Any]] = {}
    for name, rounds in runs.items():
        if not rounds:
            continue
        summary[name] = {
            "workloads": summarize_rounds([r["workloads"] for r in rounds]),
            "peak_rss_mb": _median([r["peak_rss_mb"] for r in rounds if r.get("peak_rss_mb")]),
            "events": rounds[0]["events"],
            "rounds": len(rounds),
        }
    return summary


def _get(summary: Mapping[str, Any], name: str, workload: str, key: str) -> float | None:
    if workload == "best":
        values = [_get(summary, name, w, key) for w in E2E]
        known = [v for v in values if v is not None]
        return max(known) if known else None
    value = summary.get(name, {}).get("workloads", {}).get(workload, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def evaluate(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for what, name, workload, base, base_workload, kind, required in TARGETS:
        mine = _get(summary, name, workload, "events_per_s")
        theirs = _get(summary, base, base_workload, "events_per_s")
        if mine is None or theirs is None or theirs == 0:
            continue
        ratio = mine / theirs
        check: dict[str, Any] = {
            "target": what,
            "measured": f"{mine:,.0f} vs {theirs:,.0f} events/s",
            "value": ratio,
            "required": f">= {required:g}x" if kind != "info" else "-",
            "ok": None if kind == "info" else ratio >= required,
        }
        if kind == "observer":
            spread = max(
                _get(summary, name, workload, "spread") or 0.0,
                _get(summary, base, base_workload, "spread") or 0.0,
            )
            check["required"] = f">= {required:g}x (spread {spread:.0%})"
            check["ok"] = ratio >= min(required, 1 - spread)
        checks.append(check)
    for transport, name, base in LATENCY_TARGETS:
        p50, base_p50 = _get(summary, name, "pingpong", "p50_ms"), _get(summary, base, "pingpong", "p50_ms")
        p99, base_p99 = _get(summary, name, "pingpong", "p99_ms"), _get(summary, base, "pingpong", "p99_ms")
        if p50 is not None and base_p50 is not None:
            checks.append(
                {
                    "target": f"{transport} ping-pong p50 vs {base}",
                    "measured": f"{p50:.3f} vs {base_p50:.3f} ms",
                    "value": p50 - base_p50,
                    "required": "<= +0.2 ms",
                    "ok": p50 <= base_p50 + 0.2,
                    "unit": "ms",
                }
            )
        if p99 is not None and base_p99 is not None:
            checks.append(
                {
                    "target": f"{transport} ping-pong p99 vs {base}",
                    "measured": f"{p99:.3f} vs {base_p99:.3f} ms",
                    "value": p99 / base_p99 if base_p99 else float("inf"),
                    "required": "<= 1.5x",
                    "ok": p99 <= 1.5 * base_p99,
                }
            )
    return checks


def evaluate_round_two(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for what, name, workload, key, base, base_workload, limit in ROUND_TWO:
        mine = _get(summary, name, workload, key)
        if mine is None:
            continue
        if base is None:
            checks.append(
                {
                    "target": what,
                    "measured": f"{mine:.1f}",
                    "value": mine,
                    "unit": "value",
                    "required": f"<= {limit:g}",
                    "ok": mine <= limit,
                }
            )
            continue
        theirs = _get(summary, base, base_workload, key)
        if theirs is None or theirs == 0:
            continue
        ratio = mine / theirs
        if key == "events_per_s":
            measured, required, ok = (
                f"{mine:,.0f} vs {theirs:,.0f} events/s",
                f">= {limit:g}x",
                ratio >= limit,
            )
        else:
            measured, required, ok = f"{mine:.3f} vs {theirs:.3f} ms", f"<= {limit:g}x", ratio <= limit
        checks.append({"target": what, "measured": measured, "value": ratio, "required": required, "ok": ok})
    return checks


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _check_value(check: Mapping[str, Any]) -> str:
    if check.get("unit") == "ms":
        return f"{check['value']:+.3f}ms"
    if check.get("unit") == "value":
        return f"{check['value']:.1f}"
    return f"{check['value']:.2f}x"


def render(report: Mapping[str, Any]) -> str:
    summary = report["summary"]
    config = report["config"]
    lines = [
        f"dotmac-events benchmark: {config['events']:,} events ({config['memory_events']:,} in-process, "
        f"{config['kafka_events']:,} on Kafka), "
        f"median of {config['rounds']} round(s), batches of {config['batch_size']}",
        "",
    ]
    header = (
        f"{'contender':<30} {'e2e pub':>9} {'e2e batch':>9} {'pub only':>9} {'pub batch':>9} "
        f"{'consume':>9} {'CPU µs/ev':>11} {'RSS MiB':>7}"
    )
    lines += ["throughput, events/s (CPU per event: e2e publish / e2e batch)", header, "-" * len(header)]
    for spec in SPECS:
        if spec.name not in summary:
            continue
        cpu = "/".join(_fmt(_get(summary, spec.name, w, "cpu_us_per_event"), ".0f") for w in E2E)
        lines.append(
            f"{spec.name:<30} "
            + " ".join(
                f"{_fmt(_get(summary, spec.name, w, 'events_per_s')):>9}"
                for w in ("e2e_publish", "e2e_batch", "publish", "publish_batch", "consume")
            )
            + f" {cpu:>11} {_fmt(summary[spec.name]['peak_rss_mb']):>7}"
        )
    header = f"{'contender':<30} {'p50':>8} {'p99':>8} {'p99.9':>8}   {'p50':>8} {'p99':>8} {'p99.9':>8}"
    lines += [
        "",
        f"latency, ms: ping-pong (one at a time) | open loop at {config['rate']:,.0f} events/s",
        header,
        "-" * len(header),
    ]
    for spec in SPECS:
        if spec.name not in summary or "pingpong" not in summary[spec.name]["workloads"]:
            continue
        cells = [
            _fmt(_get(summary, spec.name, w, k), ".3f")
            for w in ("pingpong", "open_loop")
            for k in ("p50_ms", "p99_ms", "p999_ms")
        ]
        ping = " ".join(f"{c:>8}" for c in cells[:3])
        loop = " ".join(f"{c:>8}" for c in cells[3:])
        lines.append(f"{spec.name:<30} {ping}   {loop}")
    for title, key in (("targets", "targets"), ("targets, second round", "targets_round_two")):
        checks = report.get(key) or []
        if not checks:
            continue
        header = f"{'target':<42} {'measured':<28} {'value':>8}  {'required':<26} result"
        lines += ["", title, header, "-" * len(header)]
        for c in checks:
            value = _check_value(c)
            result = "-" if c["ok"] is None else ("PASS" if c["ok"] else "MISS")
            lines.append(f"{c['target']:<42} {c['measured']:<28} {value:>8}  {c['required']:<26} {result}")
    if report.get("skipped"):
        lines += ["", "skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000, help="events per workload on a broker")
    parser.add_argument("--memory-events", type=int, default=200_000, help="events per workload in-process")
    parser.add_argument(
        "--kafka-events",
        type=int,
        default=20_000,
        help="events per workload on Kafka (Tansu's in-memory log slows down as partitions grow)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--latency-samples", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s of the open-loop latency run")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed events before the workloads")
    parser.add_argument("--only", help="comma-separated contenders (default: all that can run here)")
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="a running Kafka-protocol broker to use instead of a private Tansu "
        "(default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument("--skip", help="comma-separated contenders to leave out")
    parser.add_argument("--smoke", action="store_true", help="tiny N, one round: checks the harness runs")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.add_argument("--worker-timeout", type=float, default=3600.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default=",".join(ALL), help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--kafka", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.worker:
        worker_main(args)
        return 0
    if args.smoke:
        args.events, args.memory_events, args.kafka_events, args.rounds = 300, 1000, 300, 1
        args.latency_samples, args.warmup, args.rate, args.worker_timeout = 50, 0, 500.0, 60.0
    names = [s.name for s in SPECS]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
    if args.skip:
        names = [n for n in names if n not in {s.strip() for s in args.skip.split(",")}]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown contenders: {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    skipped: dict[str, str] = {}
    specs: list[Spec] = []
    for name in names:
        reason = _available(BY_NAME[name])
        if reason is None:
            specs.append(BY_NAME[name])
        else:
            skipped[name] = reason
    return _orchestrate(args, specs, skipped)


def _orchestrate(args: argparse.Namespace, specs: list[Spec], skipped: dict[str, str]) -> int:
    from servers import RedisServer, TansuServer, log, unwind_on_signals

    unwind_on_signals()
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
    failures: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        servers: dict[str, str] = {}
        if any(s.transport == "redis" for s in specs):
            redis = stack.enter_context(RedisServer())
            servers["redis"] = redis.url
            log(f"redis-server on {redis.url}")
        if any(s.transport == "kafka" for s in specs) and args.kafka_bootstrap:
            servers["kafka"] = args.kafka_bootstrap
            os.environ["DOTMAC_BENCH_KAFKA_EXTERNAL"] = "1"  # the workers' group settings
            log(f"Kafka at {args.kafka_bootstrap} (not started by this run)")
        elif any(s.transport == "kafka" for s in specs):
            tansu = stack.enter_context(TansuServer())
            servers["kafka"] = tansu.bootstrap
            log(f"Tansu on {tansu.bootstrap}")
        for index in range(args.rounds):
            for spec in specs:
                if spec.name in failures:
                    continue
                prefix = f"[round {index + 1}/{args.rounds}] {spec.name}: "
                t0 = time.perf_counter()
                try:
                    result = _run_worker(spec, args, servers, prefix)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    failures[spec.name] = str(exc)
                    log(f"{prefix}FAILED: {exc}")
                    continue
                runs[spec.name].append(result)
                e2e = result["workloads"].get("e2e_publish") or result["workloads"].get("e2e_batch") or {}
                rate = f", e2e {e2e['events_per_s']:,.0f} events/s" if e2e else ""
                log(f"{prefix}done in {time.perf_counter() - t0:.1f} s{rate}")
    summary = summarize(runs)
    report = {
        "machine": _machine(),
        "config": {
            "events": args.events,
            "memory_events": args.memory_events,
            "kafka_events": args.kafka_events,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "latency_samples": args.latency_samples,
            "rate": args.rate,
            "warmup": args.warmup,
            "smoke": args.smoke,
        },
        "contenders": {s.name: s.label for s in specs},
        "summary": summary,
        "targets": evaluate(summary),
        "targets_round_two": evaluate_round_two(summary),
        "skipped": {**skipped, **{k: f"failed: {v}" for k, v in failures.items()}},
        "per_round": runs,
        "seconds": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
        log(f"{report['seconds']:.0f} s in all")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
