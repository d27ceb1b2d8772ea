"""``dotmac-events run`` in a real subprocess on memory://: signals and exit codes."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "apps"))

from harness import Service, Services  # noqa: E402

pytest.importorskip("dotmac_events_memory")

MEMORY = ["--url", "memory://svc"]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Services]:
    services = Services(tmp_path)
    yield services
    services.cleanup()


def test_sigterm_drains_in_flight_handlers_and_exits_0(service: Services) -> None:
    svc = service("worker:app", "worker:feeder", *MEMORY, SVC_FEED=6, SVC_SECONDS=0.5, SVC_CONCURRENCY=2)
    svc.wait_until(lambda: sum(r[0] == "start" for r in svc.records()) >= 2, 60, "two handlers running")
    svc.signal(signal.SIGTERM)
    assert svc.wait(20) == 0
    log = svc.log()
    steps = [r[0] for r in svc.records()]
    started = sum(s == "start" for s in steps)
    done = sum(s == "done" for s in steps)
    assert started == done >= 2  # every handler that began, finished
    assert steps[-1] == "down"  # shutdown hooks after the drain
    assert "received SIGTERM: stopping intake and draining" in log
    drained = re.search(r"svc: drained (\d+) of (\d+) in-flight handler\(s\) in [\d.]+s \(0 cancelled", log)
    assert drained is not None, log
    assert int(drained.group(1)) == int(drained.group(2)) >= 2  # the handlers running at SIGTERM
    assert f"released for redelivery; in all {done} handled" in log
    assert "exit code 0" in log


def test_grace_expiry_exits_1_and_a_second_signal_forces_exit_4(service: Callable[..., Service]) -> None:
    slow = {"SVC_FEED": 3, "SVC_SECONDS": 60, "SVC_CONCURRENCY": 2}
    expired = service("worker:app", "worker:feeder", *MEMORY, "--grace", "0.3", **slow)
    forced = service("worker:app", "worker:feeder", *MEMORY, "--grace", "60", **slow)
    for svc in (expired, forced):
        svc.wait_until(lambda s=svc: sum(r[0] == "start" for r in s.records()) >= 2, 60, "handlers running")

    expired.signal(signal.SIGTERM)
    assert expired.wait(20) == 1
    assert "drained 0 of 2 in-flight handler(s)" in expired.log()
    assert "(2 cancelled at the grace limit)" in expired.log()
    assert "exit code 1" in expired.log()

    forced.signal(signal.SIGTERM)
    forced.wait_log("received SIGTERM: stopping intake")
    began = time.monotonic()
    forced.signal(signal.SIGINT)
    assert forced.wait(10) == 4
    assert time.monotonic() - began < 5  # not the 60 s grace
    assert "received SIGINT again: forcing exit with code 4" in forced.log()


def test_startup_failure_exits_3_and_a_bad_target_exits_2(service: Callable[..., Service]) -> None:
    failing = service("worker:app", *MEMORY, SVC_FAIL_STARTUP="no database")
    assert failing.wait(20) == 3
    assert "startup of svc failed: RuntimeError: no database" in failing.log()
    missing = service("worker:nothing", *MEMORY)
    assert missing.wait(20) == 2
    assert "has no attribute 'nothing'" in missing.log()


def test_consume_drains_on_sigterm(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "consume.log"
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dotmac.events.cli",
                "-vv",
                "consume",
                "t",
                "--url",
                "memory://c",
                "--timeout",
                "60",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while "bus started" not in out.read_text():  # the subscription is about to be live
                assert time.monotonic() < deadline, out.read_text()
                assert proc.poll() is None, out.read_text()
                time.sleep(0.02)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0  # before: killed by the signal (-15)
            assert time.monotonic() - began < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_workers_get_the_url_through_the_environment_not_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    import dotmac.events.app.serve as serve
    from dotmac.events.cli import main

    seen: dict[str, Any] = {}

    def fake_run_workers(argv: list[str], workers: int, grace: float, env: dict[str, str]) -> int:
        seen.update(argv=argv, workers=workers, grace=grace, env=env)
        return 0

    monkeypatch.setattr(serve, "run_workers", fake_run_workers)
    apps = str(Path(__file__).resolve().parent / "apps")
    url = "redis://:s3cret@localhost:6379/0"
    assert main(["run", "worker:app", "--workers", "3", "--url", url, "--app-dir", apps]) == 0
    assert seen["workers"] == 3 and seen["grace"] == 30.0
    assert not any("s3cret" in arg for arg in seen["argv"])  # the process list shows argv
    assert seen["env"] == {serve.ENV_RUN_URL: url}
    assert seen["argv"][:3] == ["run", "worker:app", "--workers"]


def test_a_restarted_worker_stopped_before_it_is_ready_counts_as_clean(service: Services) -> None:
    import os

    sup = service("worker:app", *MEMORY, "--workers", "2", "--grace", "5")
    match = sup.wait_log(r"worker 1 started \(pid (\d+)\)")
    sup.wait_until(lambda: len(re.findall("running 1 app", sup.log())) >= 2, 60, "two workers running")
    os.kill(int(match.group(1)), signal.SIGKILL)
    sup.wait_log(r"worker 1 \(pid \d+\) died with signal SIGKILL; restarting")
    first = match.group(1)
    sup.wait_log(rf"worker 1 started \(pid (?!{first}\))\d+\)")
    # The new worker is still importing: the SIGTERM passed on to it kills it before
    # its handlers exist. It had subscribed to nothing, so that is a clean stop.
    sup.signal(signal.SIGTERM)
    assert sup.wait(30) == 0, sup.log()
    assert "all workers stopped (1 restart(s)); exit code 0" in sup.log()
