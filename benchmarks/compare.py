"""This checkout against an older commit, in one run: old and new code, same workloads.

``--base`` is checked out into a temporary git worktree and installed into a venv of
its own (``uv venv`` + ``uv pip install -e core -e plugins/memory -e plugins/redis``
of that worktree, with the redis, hiredis and orjson versions of this environment).
Both sides then run the workloads of ``benchmarks/run.py`` in fresh interpreters,
round by round, old and new alternating (the order swaps every round) against the
same private redis-server. The workload code is this checkout's
(``dotmac.events.bench`` loaded over the old tree's package), so only the bus under
test differs. The table gives medians of the rounds and the ratio new / old.

    python benchmarks/compare.py --base 555b04a
    python benchmarks/compare.py --base main --only bus-redis --rounds 5 --events 20000
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from servers import RedisServer, log, unwind_on_signals

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_MODULE = ROOT / "core" / "src" / "dotmac" / "events" / "bench.py"
CONTENDERS = ("bus-memory", "bus-redis")
WORKLOADS = ("e2e_publish", "e2e_batch", "publish", "publish_batch", "consume")
PINNED = ("redis", "hiredis", "orjson")


def _uv() -> str:
    for candidate in (ROOT / ".tools" / "bin" / "uv", shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise SystemExit("uv is needed to build the base commit's venv (pip install uv)")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def base_checkout(commit: str) -> Iterator[tuple[str, Path]]:
    """A worktree of ``commit`` with a venv: yields (tree, python)."""
    sha = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="dotmac-compare-"))
    tree, venv = tmp / "tree", tmp / "venv"
    try:
        _git("worktree", "add", "--detach", "--quiet", str(tree), sha)
        uv = _uv()
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
        python = venv / "bin" / "python"
        pins = []
        for dist in PINNED:
            with contextlib.suppress(PackageNotFoundError):
                pins.append(f"{dist}=={version(dist)}")
        editable = [
            a for part in ("core", "plugins/memory", "plugins/redis") for a in ("-e", str(tree / part))
        ]
        log(f"base {commit} ({sha[:10]}): installing into {venv}")
        subprocess.run([uv, "pip", "install", "-q", "-p", str(python), *editable, *pins], check=True, env=env)
        yield sha, python
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)


def shim_main(argv: list[str]) -> None:
    """Worker entry: this checkout's workloads over whichever ``dotmac.events`` is
    installed in the running interpreter, then ``run.py``'s worker."""
    import dotmac.events  # noqa: F401 - the package the harness module attaches to

    spec = importlib.util.spec_from_file_location("dotmac.events.bench", BENCH_MODULE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dotmac.events.bench"] = module
    spec.loader.exec_module(module)
    sys.path.insert(0, str(HERE))
    import run

    run.main(argv)


def run_side(
    python: Path,
    contender: str,
    workloads: Sequence[str],
    args: argparse.Namespace,
    redis_url: str,
    prefix: str,
) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import run

    spec = run.BY_NAME[contender]
    # run.py's worker options that this script does not expose keep their defaults.
    options = argparse.Namespace(**{"kafka_events": 0, "latency_samples": 0, "rate": 1000.0, **vars(args)})
    worker = run.worker_args(spec, options, {"redis": redis_url}, prefix, workloads)
    argv = [str(python), str(Path(__file__).resolve()), "--shim", *worker]
    env = {**os.environ, **spec.env, "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{prefix}exit status {out.returncode} (its stderr is above)")
    return run.parse_result(prefix, out.stdout)


def one_round(
    python: Path, contender: str, args: argparse.Namespace, redis_url: str, prefix: str
) -> dict[str, Any]:
    """Throughput workloads in one interpreter, the backlog in another (as run.py does)."""
    merged: dict[str, Any] = {"workloads": {}}
    chosen = [w for w in WORKLOADS if w in args.workloads]
    for group in ([w for w in chosen if w != "consume"], [w for w in chosen if w == "consume"]):
        if not group:
            continue
        part = run_side(python, contender, group, args, redis_url, prefix)
        merged["workloads"].update(part["workloads"])
        if group[0] != "consume":
            merged["peak_rss_mb"] = part["peak_rss_mb"]
    return merged


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def table(runs: Mapping[str, Mapping[str, list[dict[str, Any]]]], base: str) -> str:
    header = f"{'contender':<11} {'workload':<14} {'metric':<10} {'old':>10} {'new':>10} {'new/old':>8}"
    lines = [f"old = {base}, new = this checkout; medians of the rounds", header, "-" * len(header)]
    for contender, sides in runs.items():
        old, new = sides.get("old", []), sides.get("new", [])
        for workload in WORKLOADS:
            for metric, label in (("events_per_s", "events/s"), ("cpu_us_per_event", "CPU µs/ev")):
                a = _median([r["workloads"][workload][metric] for r in old if workload in r["workloads"]])
                b = _median([r["workloads"][workload][metric] for r in new if workload in r["workloads"]])
                if a is None or b is None:
                    continue
                lines.append(
                    f"{contender:<11} {workload:<14} {label:<10} {a:>10,.1f} {b:>10,.1f} {b / a:>7.2f}x"
                )
        a = _median([r["peak_rss_mb"] for r in old if r.get("peak_rss_mb")])
        b = _median([r["peak_rss_mb"] for r in new if r.get("peak_rss_mb")])
        if a and b:
            lines.append(
                f"{contender:<11} {'throughput':<14} {'RSS MiB':<10} {a:>10,.1f} {b:>10,.1f} {b / a:>7.2f}x"
            )
    lines.append("events/s: higher is better; CPU and RSS: lower is better")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--shim":
        shim_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base", required=True, help="the commit to compare against (anything git rev-parse takes)"
    )
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated: bus-memory, bus-redis")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=10_000, help="events per workload on Redis")
    parser.add_argument("--memory-events", type=int, default=50_000, help="events per workload in-process")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated, from: " + ", ".join(WORKLOADS)
    )
    parser.add_argument("--json", metavar="PATH", help="write every round's figures to PATH")
    args = parser.parse_args(argv)
    contenders = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders: {', '.join(unknown)} (known: {', '.join(CONTENDERS)})")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not set(args.workloads) <= set(WORKLOADS):
        parser.error(f"workloads are among: {', '.join(WORKLOADS)}")
    sys.path.insert(0, str(HERE))
    unwind_on_signals()
    started = time.perf_counter()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {"old": [], "new": []} for c in contenders}
    with base_checkout(args.base) as (sha, old_python), RedisServer() as redis:
        sides = {"old": old_python, "new": Path(sys.executable)}
        for index in range(args.rounds):
            order = ("old", "new") if index % 2 == 0 else ("new", "old")
            for contender in contenders:
                for side in order:
                    prefix = f"[round {index + 1}/{args.rounds}] {contender} {side}: "
                    result = one_round(sides[side], contender, args, redis.url, prefix)
                    runs[contender][side].append(result)
                    e2e = result["workloads"].get("e2e_batch") or result["workloads"].get("e2e_publish") or {}
                    log(prefix + (f"e2e {e2e['events_per_s']:,.0f} events/s" if e2e else "done"))
    print(table(runs, f"{args.base} ({sha[:10]})"))
    if args.json:
        Path(args.json).write_text(json.dumps({"base": sha, "runs": runs}, indent=2) + "\n")
    log(f"{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
