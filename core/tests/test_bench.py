"""``dotmac-events bench`` and the workloads behind it, on memory://."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from dotmac.events.bench import BusContender, percentile, run_workloads, summarize_rounds
from dotmac.events.cli import main

pytest.importorskip("dotmac_events_memory")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile([3.0], 99.9) == 3.0


def test_every_workload_sees_every_event() -> None:
    async def scenario() -> dict[str, dict[str, float]]:
        contender = BusContender("memory://bench-test?retention=500")
        await contender.start()
        try:
            return await run_workloads(contender, events=400, latency_samples=30, rate=2000, warmup=20)
        finally:
            await contender.close()

    results = asyncio.run(scenario())
    assert set(results) == {
        "e2e_publish",
        "e2e_batch",
        "publish",
        "publish_batch",
        "consume",
        "pingpong",
        "open_loop",
    }
    for name in ("e2e_publish", "e2e_batch", "consume"):
        assert results[name]["events"] == 400
        assert results[name]["duplicates"] == 0
        assert results[name]["events_per_s"] > 0
    assert results["pingpong"]["samples"] == 30
    ping = results["pingpong"]
    assert 0 < ping["p50_ms"] <= ping["p99_ms"] <= ping["p999_ms"]
    assert results["open_loop"]["rate"] == 2000


def test_medians_over_rounds() -> None:
    rounds = [
        {"e2e_publish": {"events_per_s": rate, "cpu_us_per_event": 1.0}} for rate in (100.0, 300.0, 200.0)
    ]
    summary = summarize_rounds(rounds)
    assert summary["e2e_publish"]["events_per_s"] == 200.0
    assert summary["e2e_publish"]["rounds"] == 3
    assert summary["e2e_publish"]["spread"] == pytest.approx(1.0)


def test_cli_json_report() -> None:
    out = io.StringIO()
    argv = ["bench", "--url", "memory://", "--events", "300", "--rounds", "2", "--latency-samples", "20"]
    code = main([*argv, "--json"], out=out)
    assert code == 0
    report = json.loads(out.getvalue())
    assert report["transport"] == "memory"
    assert report["events"] == 300 and report["rounds"] == 2
    assert report["results"]["e2e_publish"]["rounds"] == 2
    assert report["results"]["consume"]["events"] == 300
    assert report["peak_rss_mb"] > 0


def test_cli_table() -> None:
    out = io.StringIO()
    assert main(["bench", "--url", "memory://", "--events", "200", "--rounds", "1"], out=out) == 0
    text = out.getvalue()
    assert "end to end, publish_many" in text and "latency, ping-pong" in text
    assert "n/a" not in text


def test_cli_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--url", "memory://", "--events", "1"], out=io.StringIO()) == 1
    assert "at least 2" in capsys.readouterr().err
