"""The conformance kit against the NATS JetStream transport.

Runs against ``$NATS_URL`` when set, otherwise against a private ``nats-server -js``
started on a free port for this module; skips when neither is there. Each test uses
a stream and subject prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import pytest

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_nats")

from dotmac_events_nats.testing import (  # noqa: E402
    NatsUnavailableError,
    delete_stream,
    nats_url_for_tests,
)


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(nats_url_for_tests())
        except NatsUnavailableError as exc:
            pytest.skip(str(exc))
        yield url


class TestNatsConformance(TransportConformance):
    timeout = 20.0

    @pytest.fixture(autouse=True)
    def _target(self, nats_url: str) -> Iterator[None]:
        # One stream per test: buses of a test share it, tests never do.
        tag = uuid.uuid4().hex[:10]
        self.stream = f"conformance_{tag}"
        self.url = f"{nats_url}?stream={self.stream}&subject_prefix=conf{tag}&storage=memory&pull_expires=0.5"
        yield
        asyncio.run(delete_stream(nats_url, self.stream))

    def create_bus(self) -> EventBus:
        return create_bus(self.url)
