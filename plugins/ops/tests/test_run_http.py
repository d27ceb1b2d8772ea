"""``dotmac-events run MODULE:APP --http :PORT`` against a private redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from dotmac_events_redis.testing import RedisServer, free_port

HERE = Path(__file__).parent
T = 20.0


def test_run_serves_probes_metrics_and_asyncapi(redis_server: Callable[[], RedisServer]) -> None:
    server = redis_server()
    port = free_port()
    cli = Path(sys.executable).parent / "dotmac-events"
    argv = [str(cli), "run", "ops_sample_app:app", "--app-dir", str(HERE), "--url", server.url]
    proc = subprocess.Popen(
        [*argv, "--http", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + T
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.TransportError:
                ready = None
            if ready is not None and ready.status_code == 200:
                break
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.1)
        assert ready is not None and ready.status_code == 200, ready.text if ready else "no answer"
        assert ready.json()["subscriptions"] == 4  # every subscriber of the app, live
        # Imports and connections at startup may hold the loop past the threshold on a
        # loaded machine; a live worker's probe turns healthy once they are behind it.
        deadline = time.monotonic() + T
        while (health := httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)).status_code != 200:
            assert time.monotonic() < deadline, health.text
            time.sleep(0.2)
        document = httpx.get(f"http://127.0.0.1:{port}/asyncapi.json").json()
        assert document["asyncapi"] == "3.0.0" and document["info"]["title"] == "billing"
        page = httpx.get(f"http://127.0.0.1:{port}/asyncapi")
        assert page.status_code == 200
        assert (
            'id="channel-orders.created"' in page.text
            and "Bills an order and issues its invoice." in page.text
        )
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'events_consumer_lag{consumer_group="billing",topic="orders.created"} 0.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=T)[0].decode()
    assert proc.returncode == 0, output
    assert "ops endpoints of billing" in output
