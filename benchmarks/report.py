"""Markdown tables of a saved benchmark report (for docs/performance.md).

python benchmarks/run.py --json > results.json
python benchmarks/report.py results.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from run import E2E, SPECS, _get

THROUGHPUT_COLUMNS = (
    ("e2e_publish", "end to end, publish"),
    ("e2e_batch", "end to end, batched"),
    ("publish", "publish only"),
    ("publish_batch", "publish only, batched"),
    ("consume", "consume only"),
)


def _n(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    summary = report["summary"]
    config = report["config"]
    labels = report.get("contenders", {})
    names = [s.name for s in SPECS if s.name in summary]
    out = [
        f"Events per workload: {config['events']:,} on Redis, "
        f"{config.get('kafka_events', config['events']):,} on Kafka, "
        f"{config['memory_events']:,} in-process; batches of {config['batch_size']}; "
        f"median of {config['rounds']} rounds.",
        "",
        "**Throughput** (events/s; CPU is client CPU per event, µs, end to end publish / batched; "
        "RSS is the peak of the throughput worker, MiB)",
        "",
    ]
    rows = []
    for name in names:
        cells = [f"`{name}`"] + [_n(_get(summary, name, w, "events_per_s")) for w, _ in THROUGHPUT_COLUMNS]
        cpu = " / ".join(_n(_get(summary, name, w, "cpu_us_per_event"), ".0f") for w in E2E)
        cells += [cpu, _n(summary[name].get("peak_rss_mb"))]
        rows.append(cells)
    out += _table(["contender", *(label for _, label in THROUGHPUT_COLUMNS), "CPU µs/event", "RSS"], rows)
    out += [
        "",
        f"**Latency** (ms; ping-pong sends one event at a time; open loop sends "
        f"{config['rate']:,.0f} events/s and measures from the scheduled send time; "
        f"{config['latency_samples']:,} samples each)",
        "",
    ]
    rows = []
    for name in names:
        if _get(summary, name, "pingpong", "p50_ms") is None:
            continue
        rows.append(
            [f"`{name}`"]
            + [
                _n(_get(summary, name, w, k), ".3f")
                for w in ("pingpong", "open_loop")
                for k in ("p50_ms", "p99_ms", "p999_ms")
            ]
        )
    out += _table(
        ["contender", "ping-pong p50", "p99", "p99.9", "open loop p50", "p99", "p99.9"],
        rows,
    )
    for title, key in (("**Targets**", "targets"), ("**Targets of the second round**", "targets_round_two")):
        if not report.get(key):
            continue
        out += ["", title, ""]
        rows = []
        for check in report[key]:
            unit = check.get("unit")
            value = (
                f"{check['value']:+.3f} ms"
                if unit == "ms"
                else f"{check['value']:.1f}"
                if unit == "value"
                else f"{check['value']:.2f}x"
            )
            result = "-" if check["ok"] is None else ("met" if check["ok"] else "**missed**")
            rows.append([check["target"], check["measured"], value, check["required"], result])
        out += _table(["comparison", "measured", "ratio", "target", "result"], rows)
    out += ["", "Contenders:", ""]
    out += [f"- `{name}`: {labels.get(name, '')}" for name in names]
    if report.get("skipped"):
        out += ["", "Not run: " + "; ".join(f"`{k}` ({v})" for k, v in report["skipped"].items())]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        report = json.load(handle)
    sys.stdout.write(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
