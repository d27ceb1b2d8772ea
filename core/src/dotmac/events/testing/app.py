"""``TestApp``: run a service :class:`~dotmac.events.App` on a private ``memory://`` bus."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..dlq import DeadLetter
from ..event import Event, validate_topic
from ..retry import is_testing, set_testing
from ..runner import Subscription

if TYPE_CHECKING:
    from ..app import App
    from ..bus import EventBus

__all__ = ["TestApp"]

# The documented x-dlq-* headers (docs/delivery.md) a dead letter carries.
DLQ_ORIGINAL_TOPIC = "x-dlq-original-topic"
DLQ_CONSUMER_GROUP = "x-dlq-consumer-group"
DLQ_ERROR_TYPE = "x-dlq-error-type"
DLQ_ERROR_MESSAGE = "x-dlq-error-message"
DLQ_ATTEMPTS = "x-dlq-attempts"
DLQ_REASON = "x-dlq-reason"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class TestApp:
    """Runs ``app`` with production semantics on a private ``memory://`` bus.

    Retries, dead letters, groups, typed payloads and middleware all run for real;
    only the backoff waits are turned off (``fast_retries=False`` keeps them)::

        async with TestApp(app) as client:
            await client.publish("orders.created", OrderCreated(id=7, total_cents=1200))
            await client.wait_handled("orders.created")
            assert client.published("orders.billed")[0].payload == {"order": 7}

    What the app publishes through ``@app.publisher`` and what its subscribers
    dead-letter is recorded; ``capture`` adds more topics to record. Waits give up
    after ``timeout`` seconds; at the end, handlers still running get ``grace``
    seconds (``timeout`` by default) before they are cancelled.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self,
        app: App,
        *,
        url: str | None = None,
        capture: Iterable[str] = (),
        fast_retries: bool = True,
        timeout: float = 5.0,
        grace: float | None = None,
    ) -> None:
        self.app = app
        self.url = url or f"memory://testapp-{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        # A handler still running when the test ends holds the stop this long at most.
        self.grace = timeout if grace is None else grace
        self._fast = fast_retries
        self._saved_testing: bool | None = None
        self._capture = list(dict.fromkeys(capture))
        for topic in self._capture:
            validate_topic(topic)
        self._records: dict[str, list[Event]] = {}
        self._changed: asyncio.Event | None = None
        self._capture_subs: list[Subscription] = []

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> TestApp:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._changed = asyncio.Event()
        if self._fast:
            self._saved_testing = is_testing()
            set_testing(True)
        try:
            await self.app.start(self.url)
            bus = self.app.bus
            # Record before anything is published: every record subscription is live now.
            for topic in self._recorded_topics():
                self._records.setdefault(topic, [])
                self._capture_subs.append(await bus.subscribe(topic, self._recorder(topic)))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        try:
            await self.app.stop(self.grace)
        finally:
            self._capture_subs.clear()
            if self._saved_testing is not None:
                set_testing(self._saved_testing)
                self._saved_testing = None

    def _recorded_topics(self) -> list[str]:
        topics = list(self._capture)
        topics += self.app.published_topics
        for spec in self.app.subscribers:
            topics += [spec.options.dlq_for(t) for t in spec.topics]
        return list(dict.fromkeys(topics))

    def _recorder(self, topic: str) -> Callable[[Event], None]:
        records = self._records[topic]

        def record(event: Event) -> None:
            records.append(event)
            assert self._changed is not None
            self._changed.set()

        return record

    # -- acting ------------------------------------------------------------------------
    @property
    def bus(self) -> EventBus:
        return self.app.bus

    async def publish(
        self,
        topic: str | Event,
        payload: Any = None,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        tenant_id: str | None = None,
    ) -> Event:
        """Publish like :meth:`App.publish`: a dict, a typed instance or an :class:`Event`."""
        return await self.app.publish(topic, payload, key=key, headers=headers, tenant_id=tenant_id)

    # -- observing ---------------------------------------------------------------------
    def _subs_of(self, topic: str | None) -> list[Subscription]:
        subs = list(self.app.subscriptions)
        return subs if topic is None else [s for s in subs if topic in s.topics]

    def handled(self, topic: str | None = None) -> int:
        """Events the app's subscribers of ``topic`` (all, when ``None``) handled and acked."""
        return sum(s.handled for s in self._subs_of(topic))

    def published(self, topic: str) -> list[Event]:
        """Events published to ``topic`` so far (a publisher or ``capture`` topic)."""
        if topic not in self._records:
            raise KeyError(
                f"{topic!r} is not recorded; pass capture=[{topic!r}] to TestApp "
                "(publisher and dead-letter topics are recorded by default)"
            )
        return list(self._records[topic])

    def dead_letters(self, topic: str) -> list[DeadLetter]:
        """Dead letters of events from ``topic`` (or in the dead-letter topic ``topic``)."""
        letters = []
        for dlq_topic in {spec.options.dlq_for(t) for spec in self.app.subscribers for t in spec.topics}:
            for event in self._records.get(dlq_topic, ()):
                original = event.headers.get(DLQ_ORIGINAL_TOPIC)
                if topic in (dlq_topic, original):
                    letters.append(self._letter(event))
        return letters

    def _letter(self, event: Event) -> DeadLetter:
        headers = event.headers
        return DeadLetter(
            message=self.bus.encode(event),
            event=event,
            original_topic=headers.get(DLQ_ORIGINAL_TOPIC),
            consumer_group=headers.get(DLQ_CONSUMER_GROUP) or None,
            error_type=headers.get(DLQ_ERROR_TYPE),
            error_message=headers.get(DLQ_ERROR_MESSAGE),
            reason=headers.get(DLQ_REASON),
            attempts=_int(headers.get(DLQ_ATTEMPTS)),
            failed_at=None,
        )

    async def _wait(self, done: Callable[[], bool], what: Callable[[], str], timeout: float | None) -> None:
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {limit}s waiting for {what()}")
            # Counters change without a signal of their own: re-check every few ms,
            # and at once when a recorded topic receives something.
            assert self._changed is not None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.005))
            except asyncio.TimeoutError:
                pass

    async def wait_handled(
        self, topic: str | None = None, count: int = 1, *, timeout: float | None = None
    ) -> None:
        """Wait until the app's subscribers of ``topic`` handled ``count`` events in total."""

        def what() -> str:
            dead = sum(s.dead_lettered for s in self._subs_of(topic))
            return (
                f"{count} handled event(s) on {topic or 'any topic'}: {self.handled(topic)} handled, "
                f"{dead} dead-lettered"
                + "".join(
                    f"; dead letter: {d.error_type}: {d.error_message}" for d in self.dead_letters_all()[:3]
                )
            )

        await self._wait(lambda: self.handled(topic) >= count, what, timeout)

    async def wait_dead_lettered(
        self, topic: str, count: int = 1, *, timeout: float | None = None
    ) -> list[DeadLetter]:
        """Wait until ``count`` dead letters of ``topic`` were recorded; returns them."""
        await self._wait(
            lambda: len(self.dead_letters(topic)) >= count,
            lambda: f"{count} dead letter(s) of {topic}: {len(self.dead_letters(topic))} so far",
            timeout,
        )
        return self.dead_letters(topic)

    async def wait_published(
        self, topic: str, count: int = 1, *, timeout: float | None = None
    ) -> list[Event]:
        """Wait until ``count`` events were published to ``topic``; returns them."""
        self.published(topic)  # a topic that is not recorded fails now, not at the deadline
        await self._wait(
            lambda: len(self._records[topic]) >= count,
            lambda: f"{count} event(s) published to {topic}: {len(self._records[topic])} so far",
            timeout,
        )
        return self.published(topic)

    def dead_letters_all(self) -> list[DeadLetter]:
        """Every dead letter recorded so far."""
        dlq_topics = {spec.options.dlq_for(t) for spec in self.app.subscribers for t in spec.topics}
        return [self._letter(e) for t in sorted(dlq_topics) for e in self._records.get(t, ())]
