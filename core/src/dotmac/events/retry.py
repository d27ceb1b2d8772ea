"""Retry policies: frozen data with a pure ``compute(attempt) -> seconds``.

Builtin policies (``none``, ``fixed``, ``exponential``) register through the
``dotmac_events_register_retry_policies`` hook like any plugin's.
"""

from __future__ import annotations

import random
from typing import Protocol

from attrs import field, frozen, validators

__all__ = [
    "ExponentialBackoff",
    "FixedDelay",
    "NoRetry",
    "RetryPolicy",
    "is_testing",
    "set_testing",
]

_testing = False


def set_testing(enabled: bool = True) -> None:
    """Turn every backoff wait into zero (for test suites); retry counts are unchanged."""
    global _testing
    _testing = enabled


def is_testing() -> bool:
    return _testing


class RetryPolicy(Protocol):
    """How many times to retry a failing handler and how long to wait before each retry."""

    @property
    def max_retries(self) -> int:
        """Retries after the first call: ``max_retries=N`` means at most N+1 handler calls."""

    def compute(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""


_non_negative_int = validators.ge(0)
_non_negative = validators.ge(0.0)


@frozen
class NoRetry:
    """Dead-letter on the first failure."""

    max_retries: int = 0

    def compute(self, attempt: int) -> float:
        return 0.0


@frozen
class FixedDelay:
    """The same wait before every retry."""

    max_retries: int = field(default=3, validator=_non_negative_int)
    delay: float = field(default=1.0, validator=_non_negative)

    def compute(self, attempt: int) -> float:
        return 0.0 if _testing else self.delay


@frozen
class ExponentialBackoff:
    """``initial * base ** (attempt - 1)`` capped at ``max_delay``, with full jitter.

    With ``jitter`` the wait is drawn uniformly from ``[0, capped]`` (the "full
    jitter" of the AWS architecture blog), which spreads retries of many consumers.
    """

    max_retries: int = field(default=3, validator=_non_negative_int)
    initial: float = field(default=1.0, validator=_non_negative)
    max_delay: float = field(default=30.0, validator=_non_negative)
    base: float = field(default=2.0, validator=validators.ge(1.0))
    jitter: bool = True

    def compute(self, attempt: int) -> float:
        if _testing:
            return 0.0
        capped = min(self.max_delay, self.initial * self.base ** max(0, attempt - 1))
        if self.jitter:
            return random.uniform(0.0, capped)  # noqa: S311 - jitter, not cryptography
        return float(capped)
