"""The two-service example of examples/shop, run with ``dotmac-events run`` on every transport."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "core" / "tests" / "apps"))

from harness import Services  # noqa: E402

ORDERS = 20  # every tenth has no total and is rejected
SETTLED = r"all 20 orders settled: 18 billed, 2 rejected"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    started = Services(tmp_path, app_dir=EXAMPLES)
    yield started
    started.cleanup()


def _stop(*running: object) -> None:
    for svc in running:
        svc.signal(signal.SIGTERM)  # type: ignore[attr-defined]
    for svc in running:
        assert svc.wait(30) == 0, svc.log()  # type: ignore[attr-defined]


def test_shop_in_one_process_on_memory(services: Services) -> None:
    pytest.importorskip("dotmac_events_memory")
    shop = services("shop.billing:app", "shop.orders:app", "--url", "memory://shop", SHOP_ORDERS=ORDERS)
    shop.wait_log(SETTLED, timeout=60)
    _stop(shop)
    assert "billing: drained" in shop.log()


def _two_services(services: Services, url: str) -> None:
    billing = services("shop.billing:app", "--url", url, "--workers", "2")
    billing.wait_log(r"(?s)running 1 app.*running 1 app", timeout=60)
    orders = services("shop.orders:app", "--url", url, SHOP_ORDERS=ORDERS)
    orders.wait_log(SETTLED, timeout=60)
    _stop(orders, billing)


def test_shop_as_two_services_on_redis(services: Services) -> None:
    pytest.importorskip("dotmac_events_redis")
    from dotmac_events_redis.testing import RedisServer, redis_server_available

    url = os.environ.get("REDIS_URL")
    if url:
        _two_services(services, f"{url}?key_prefix=shop-{uuid.uuid4().hex[:8]}:")
        return
    if not redis_server_available():
        pytest.skip("redis-server is not installed and REDIS_URL is not set")
    with RedisServer() as server:
        _two_services(services, server.url)


def test_shop_as_two_services_on_kafka(services: Services) -> None:
    pytest.importorskip("dotmac_events_kafka")
    from dotmac_events_kafka.testing import fast_url, kafka_bootstrap_servers

    with kafka_bootstrap_servers() as servers:
        _two_services(services, fast_url(servers))


def test_the_example_tests_pass_as_a_user_runs_them() -> None:
    """examples/shop/test_billing.py with plain pytest: TestApp and the pytest11 fixture."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "shop")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_the_guide_shows_the_example_tests_as_they_are() -> None:
    """docs/services.md shows examples/shop/test_billing.py verbatim (below its header)."""
    guide = (ROOT / "docs" / "services.md").read_text()
    section = guide.split("## 5. Test it", 1)[1]
    # The block's info string may carry attributes (``python file=...``).
    shown = section.split("```python", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    source = (EXAMPLES / "shop" / "test_billing.py").read_text()
    body = source.split("from __future__ import annotations\n\n", 1)[1]
    assert shown == body
