from __future__ import annotations

import pytest

from dotmac.events import ConfigurationError, ConsumerOptions, create_exponential_retry_options
from dotmac.events.retry import ExponentialBackoff, FixedDelay, NoRetry, set_testing


@pytest.fixture(autouse=True)
def _real_waits() -> None:
    set_testing(False)


def test_exponential_without_jitter_doubles_and_caps() -> None:
    policy = ExponentialBackoff(max_retries=10, initial=0.1, max_delay=1.0, jitter=False)
    assert [policy.compute(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_stays_within_bounds() -> None:
    policy = ExponentialBackoff(max_retries=10, initial=0.1, max_delay=1.0)
    draws = [policy.compute(4) for _ in range(500)]
    assert all(0.0 <= d <= 0.8 for d in draws)
    assert len(set(draws)) > 400  # random, not constant


def test_fixed_and_none() -> None:
    assert FixedDelay(max_retries=2, delay=0.5).compute(7) == 0.5
    assert NoRetry().max_retries == 0


def test_testing_mode_turns_waits_off() -> None:
    set_testing(True)
    assert ExponentialBackoff(initial=5).compute(3) == 0.0
    assert FixedDelay(delay=5).compute(1) == 0.0


def test_seed_helper() -> None:
    options = create_exponential_retry_options(max_retries=5, base_delay_ms=100, max_delay_ms=30000)
    assert (options.max_retries, options.backoff_base_ms, options.backoff_max_ms) == (5, 100, 30000)
    assert options.retry_policy == "exponential"


def test_seed_consumer_options_verbatim() -> None:
    options = ConsumerOptions(max_retries=3, backoff_base_ms=1000, dlq_topic="failed.events")
    assert options.dlq_for("orders") == "failed.events"
    assert ConsumerOptions().dlq_for("orders") == "orders.dlq"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"concurrency": 0}, "concurrency"),
        ({"prefetch_count": True}, "prefetch_count"),
        ({"dlq_topic": "bad topic"}, "dlq_topic"),
        ({"start_from": "middle"}, "start_from"),
        ({"handler_timeout": 0}, "handler_timeout"),
    ],
)
def test_bad_options(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        ConsumerOptions(**kwargs)  # type: ignore[arg-type]
