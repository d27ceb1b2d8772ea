"""The ops page in headless Chromium (Selenium) against a private redis-server: live lag,
a dead letter opened and replayed, and screenshots of the main views."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dotmac.events import ConsumerOptions, Event, NonRetryableError, create_bus
from dotmac.events.testing import Collector
from dotmac_events_ops import OpsServer
from dotmac_events_redis.testing import RedisServer

T = 20.0
TOKEN = "browser-test-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        reason = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason='needs selenium: pip install "dotmac-events-ops[test]"'
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    # An explicit driver path: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(T)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page's script replaces the table rows every two seconds: an element found
    # just before that goes stale, and the condition is simply asked again.
    wait = WebDriverWait(driver, T, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(condition, message=f"timed out waiting for {what}")


def lag_of(driver: Any, group: str) -> str | None:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'#groups tr[data-group="{group}"] td.lag')
    return rows[0].text if rows else None


async def test_page_shows_live_lag_and_replays_a_dead_letter(
    browser: Any,
    redis_server: Callable[[], RedisServer],
    registry: CollectorRegistry,
    topic: str,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    shots.mkdir()
    server = redis_server()
    fixed: set[str] = set()

    def fail(event: Event, _count: int) -> BaseException | None:
        if event.payload["kind"] == "bad" and "bad" not in fixed:
            return NonRetryableError("the price is missing")
        return None

    seen = Collector(fail=fail)
    async with create_bus(server.url) as bus:
        await bus.subscribe(topic, seen, group="billing", options=ConsumerOptions(max_retries=0))
        reports = await bus.subscribe(topic, Collector(), group="reports")
        await reports.stop()  # a group whose consumers are gone: its lag grows
        async with OpsServer(bus, port=0, registry=registry, token=TOKEN, topics=[topic]) as ops:

            def step(fn: Callable[[], Any]) -> Any:
                return asyncio.to_thread(fn)

            await step(lambda: browser.get(f"{ops.url}/"))
            await step(
                lambda: wait_until(browser, lambda d: lag_of(d, "reports") == "0", "the reports group")
            )

            bad = Event(topic=topic, payload={"kind": "bad", "order": 7})
            await bus.publish_many(
                [Event(topic=topic, payload={"kind": "ok"}), bad, Event(topic=topic, payload={"kind": "ok"})]
            )
            # The page polls its JSON view: the lag changes without a reload.
            await step(
                lambda: wait_until(browser, lambda d: lag_of(d, "reports") == "3", "the lag to reach 3")
            )
            await step(lambda: wait_until(browser, lambda d: lag_of(d, "billing") == "0", "billing's lag"))
            await step(lambda: browser.save_screenshot(str(shots / "groups.png")))

            await seen.wait(lambda c: c.total_calls >= 3, T)
            await step(lambda: browser.get(f"{ops.url}/dlq?dlq={topic}.dlq"))
            link = f'tr[data-event-id="{bad.event_id}"] a.open'

            def open_letter() -> bool:
                browser.refresh()  # the dead letter is written just after the failed call
                found = browser.find_elements(By.CSS_SELECTOR, link)
                return bool(found)

            await step(lambda: wait_until(browser, lambda d: open_letter(), "the dead letter in the list"))
            await step(lambda: browser.save_screenshot(str(shots / "dead-letters.png")))
            await step(lambda: browser.find_element(By.CSS_SELECTOR, link).click())
            await step(lambda: wait_until(browser, lambda d: d.find_elements(By.ID, "payload"), "the letter"))
            payload = await step(lambda: browser.find_element(By.ID, "payload").text)
            assert '"order": 7' in payload
            headers = await step(lambda: browser.find_element(By.ID, "headers").text)
            assert "x-dlq-error-message" in headers and "the price is missing" in headers
            await step(lambda: browser.save_screenshot(str(shots / "dead-letter.png")))

            fixed.add("bad")
            await step(lambda: browser.find_element(By.ID, "replay").click())
            await step(
                lambda: wait_until(browser, lambda d: d.find_elements(By.ID, "do-replay"), "the confirmation")
            )
            await step(lambda: browser.find_element(By.ID, "token").send_keys(TOKEN))
            await step(lambda: browser.find_element(By.ID, "confirm").click())
            await step(lambda: browser.save_screenshot(str(shots / "replay-confirm.png")))
            await step(lambda: browser.find_element(By.ID, "do-replay").click())
            await step(
                lambda: wait_until(browser, lambda d: d.find_elements(By.ID, "replayed"), "the replay")
            )
            assert "Replayed 1" in await step(lambda: browser.find_element(By.ID, "replayed").text)
            # Handled this time, with the same event id.
            await seen.wait(lambda c: bad.event_id in c.ids, T)
            assert seen.calls[bad.event_id] == 2

    saved = sorted(p.name for p in shots.iterdir())
    assert saved == ["dead-letter.png", "dead-letters.png", "groups.png", "replay-confirm.png"]
    assert all((shots / name).stat().st_size > 10_000 for name in saved)
    print(f"\nscreenshots in {shots}")
