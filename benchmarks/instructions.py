"""Instructions per event, counted with callgrind, and what the open targets leave.

CPU time on a shared machine moves by a third between runs; instructions counted by
``valgrind --tool=callgrind`` do not. Each figure here is the difference between two
runs of one workload at two sizes (``--small`` and ``--large`` events) divided by the
difference in events, so start-up, connecting and joining a group cancel out. The
contenders are those of ``run.py`` (its worker mode, warm-up off); the envelope rows
time the pieces of ``envelope_cost.py`` on the benchmark order: building the
``Event``, ``bus.encode`` and ``bus._decode``. Consume only is the ``consume``
workload less its ``publish_batch`` backlog.

The report ends with each second-round target as an instruction budget: the raw
contender's count divided by the ratio the target asks for, next to the bus's count
and the floor, the instructions the bus cannot avoid: the envelope alone (and where
the bus sends through the same client, that client's own work on top).

A private redis-server and Tansu start for the broker rows, as in ``run.py``.
valgrind runs the interpreter about 50 times slower: the report takes about a
quarter of an hour on two cores, the in-process part (``--only memory``) four minutes.

    python benchmarks/instructions.py
    python benchmarks/instructions.py --only memory
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLLECTED = re.compile(r"Collected : (\d+)")

# (contender, workload) pairs of run.py counted per transport.
ROWS = {
    "memory": [("queue", "e2e_publish"), ("bus-memory", "e2e_publish")],
    "redis": [("redis-py-pipelined", "e2e_batch"), ("bus-redis", "e2e_batch")],
    "kafka": [
        (name, workload)
        for name in ("aiokafka", "bus-kafka")
        for workload in ("e2e_batch", "publish_batch", "consume")
    ],
}
PIECES = ("build", "encode", "decode")


def count(argv: Sequence[str], env: dict[str, str]) -> int:
    """Instructions the command ran (every thread), counted by callgrind."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        env={**os.environ, "PYTHONHASHSEED": "0", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    found = COLLECTED.findall(out.stderr)
    if out.returncode != 0 or not found:
        sys.stderr.write(out.stderr[-3000:])
        raise RuntimeError(f"{' '.join(argv[-12:])} failed under valgrind (exit status {out.returncode})")
    return int(found[-1])


def per_event(argv_for: Callable[[int], list[str]], env: dict[str, str], small: int, large: int) -> float:
    """(instructions at ``large`` - at ``small``) / (``large`` - ``small``)."""
    return (count(argv_for(large), env) - count(argv_for(small), env)) / (large - small)


def contender_row(
    name: str, workload: str, servers: dict[str, str], small: int, large: int, prefix: str
) -> float:
    import run

    spec = run.BY_NAME[name]
    args = argparse.Namespace(
        events=0, memory_events=0, kafka_events=0, batch_size=500, latency_samples=0, rate=1000.0, warmup=0
    )

    def argv_for(n: int) -> list[str]:
        args.events = args.memory_events = args.kafka_events = n
        return [
            sys.executable,
            str(HERE / "run.py"),
            *run.worker_args(spec, args, servers, f"{prefix}-{name}-{workload}-{n}", [workload]),
        ]

    return per_event(argv_for, dict(spec.env), small, large)


def piece_row(piece: str, small: int, large: int) -> float:
    """One envelope piece (or ``json``), less the loop around it."""

    def argv(which: str) -> Callable[[int], list[str]]:
        return lambda n: [sys.executable, str(Path(__file__).resolve()), "--piece", which, "--events", str(n)]

    env = {"DOTMAC_EVENTS_LOAD_PLUGINS": "memory"}
    return per_event(argv(piece), env, small, large) - per_event(argv("none"), env, small, large)


def run_piece(piece: str, events: int) -> None:
    """The loop counted for one envelope row (``none``: the loop alone; ``json``: the
    raw contenders' ``orjson.dumps`` and ``loads`` of the order)."""
    import orjson

    from dotmac.events import Event, create_bus
    from dotmac.events.bench import HEADERS, order_payload

    bus = create_bus("memory://instructions")
    payload = order_payload(7)
    event = Event(topic="orders", payload=payload, key=payload["customer_id"], headers=HEADERS)
    message = bus.encode(event)
    work = {
        "none": lambda: None,
        "build": lambda: Event(topic="orders", payload=payload, key=payload["customer_id"], headers=HEADERS),
        "encode": lambda: bus.encode(event),
        "decode": lambda: bus._decode(message),
        "json": lambda: orjson.loads(orjson.dumps(payload)),
    }[piece]
    for _ in range(events):
        work()


def report(counts: dict[tuple[str, str], float]) -> str:
    """The counts and, for each target whose contenders were counted, its budget."""
    lines = ["| contender | workload | instructions per event |", "|---|---|---|"]
    lines += [f"| `{name}` | {workload} | {value:,.0f} |" for (name, workload), value in counts.items()]
    for name in ("aiokafka", "bus-kafka"):
        if (name, "consume") in counts and (name, "publish_batch") in counts:
            only = counts[name, "consume"] - counts[name, "publish_batch"]
            counts[name, "consume only"] = only
            lines.append(f"| `{name}` | consume only (consume less publish_batch) | {only:,.0f} |")
    envelope = sum(counts.get(("envelope", p), 0.0) for p in PIECES)
    have_envelope = all(("envelope", p) in counts for p in PIECES)
    if have_envelope:
        lines.append(f"| envelope | build + encode + decode | {envelope:,.0f} |")
    # (target, raw contender row, bus row, ratio asked for, "client" when the bus drives the raw client)
    targets = [
        (
            "memory e2e vs asyncio.Queue + orjson",
            ("queue", "e2e_publish"),
            ("bus-memory", "e2e_publish"),
            0.3,
            None,
        ),
        (
            "Redis e2e pipelined vs redis-py pipelined",
            ("redis-py-pipelined", "e2e_batch"),
            ("bus-redis", "e2e_batch"),
            0.8,
            None,
        ),
        (
            "Kafka e2e batched vs aiokafka",
            ("aiokafka", "e2e_batch"),
            ("bus-kafka", "e2e_batch"),
            0.7,
            "client",
        ),
        (
            "Kafka consume only vs aiokafka",
            ("aiokafka", "consume only"),
            ("bus-kafka", "consume only"),
            0.5,
            "client",
        ),
    ]
    rows = []
    for what, raw, bus, ratio, extra in targets:
        if raw not in counts or bus not in counts or not have_envelope:
            continue
        budget = counts[raw] / ratio
        # Consume only starts its clock after the backlog was published: decoding is
        # the envelope's whole share there.
        floor = counts["envelope", "decode"] if raw[1] == "consume only" else envelope
        if extra == "client":
            # The bus sends and fetches through aiokafka: at least the raw contender's
            # client work, taken as its whole count less the JSON it encodes and decodes.
            floor += counts[raw] - counts["json", "dumps + loads"]
        verdict = "below the floor: out of reach" if floor > budget else "above the floor"
        figures = " | ".join(f"{value:,.0f}" for value in (counts[raw], budget, counts[bus], floor))
        rows.append(f"| {what} | {ratio}x | {figures} | {verdict} |")
    if rows:
        lines += [
            "",
            "| target | ratio | raw contender | budget (raw / ratio) | bus | floor | verdict |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="memory,envelope,redis,kafka", help="comma-separated parts")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=3000)
    parser.add_argument(
        "--jobs", type=int, default=2, help="counts run at once (they do not disturb each other)"
    )
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="a running Kafka-protocol broker instead of a private Tansu (default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument("--piece", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.piece:
        run_piece(args.piece, args.events)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    from servers import RedisServer, TansuServer, unwind_on_signals

    unwind_on_signals()
    jobs: dict[tuple[str, str], object] = {}
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(args.jobs))
        servers: dict[str, str] = {}
        if "redis" in parts:
            servers["redis"] = stack.enter_context(RedisServer()).url
        if "kafka" in parts:
            if args.kafka_bootstrap:
                servers["kafka"] = args.kafka_bootstrap
                os.environ["DOTMAC_BENCH_KAFKA_EXTERNAL"] = "1"  # as run.py sets it for its workers
            else:
                servers["kafka"] = stack.enter_context(TansuServer()).bootstrap
        prefix = f"instructions {os.getpid()}"
        for part in ("memory", "redis", "kafka"):
            if part in parts:
                for name, workload in ROWS[part]:
                    jobs[name, workload] = pool.submit(
                        contender_row, name, workload, servers, args.small, args.large, prefix
                    )
        if parts & {"memory", "envelope", "redis", "kafka"}:
            for piece in (*PIECES, "json"):
                key = ("json", "dumps + loads") if piece == "json" else ("envelope", piece)
                jobs[key] = pool.submit(piece_row, piece, args.small * 5, args.large * 5)
        counts = {key: job.result() for key, job in jobs.items()}  # type: ignore[attr-defined]
    print(report(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
