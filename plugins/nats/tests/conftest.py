"""Fixtures: a private nats-server (or ``$NATS_URL``), per-test streams, fault figures."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dotmac.events.testing.figures import FaultFigures
from dotmac_events_nats.testing import NatsUnavailableError, delete_stream, nats_url_for_tests

# Figures of the fault tests, printed at the end of the run (visible with -q).
_figures = FaultFigures("nats fault-test figures")
report = _figures.fixture()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """``$NATS_URL``, or a private nats-server with JetStream on a free port for the session.

    Skips when neither is available; a server that listens but misbehaves fails the tests.
    """
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(nats_url_for_tests())
        except NatsUnavailableError as exc:
            pytest.skip(str(exc))
        yield url


@pytest.fixture
def bus_url(nats_url: str) -> Iterator[Callable[..., str]]:
    """``bus_url(**query)``: a URL on a stream and subject prefix of this test's own.

    The stream is deleted after the test. Extra query parameters are appended.
    """
    tag = uuid.uuid4().hex[:10]
    stream = f"test_{tag}"

    def make(**query: Any) -> str:
        params = {"stream": stream, "subject_prefix": f"t{tag}", "pull_expires": "0.5", **query}
        return nats_url + "?" + "&".join(f"{k}={v}" for k, v in params.items())

    make.stream = stream  # type: ignore[attr-defined]
    yield make
    asyncio.run(delete_stream(nats_url, stream))
