"""Per-subscription consumer options."""

from __future__ import annotations

from typing import Any, Literal

from attrs import field, frozen

from .errors import ConfigurationError
from .event import validate_topic
from .transport import StartFrom

__all__ = [
    "ConsumerOptions",
    "create_exponential_retry_options",
    "create_fixed_retry_options",
    "retry_topic",
]


def _int_at_least(minimum: int) -> Any:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(
                f"ConsumerOptions.{attr.name} must be an int >= {minimum}, got {value!r}"
            )

    return check


def _optional_positive(_inst: Any, attr: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigurationError(f"ConsumerOptions.{attr.name} must be > 0 or None, got {value!r}")


def _check_dlq(_inst: Any, _attr: Any, value: Any) -> None:
    if value is not None:
        try:
            validate_topic(value, field_name="dlq_topic")
        except ValueError as exc:
            raise ConfigurationError(f"ConsumerOptions.{exc}") from exc


def _retry_delays(value: Any) -> Any:
    # A list is as natural to write as a tuple; the options stay hashable and frozen.
    return tuple(value) if isinstance(value, list) else value


def _check_retry_topics(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, tuple) or any(
        isinstance(d, bool) or not isinstance(d, (int, float)) or not d >= 0 for d in value
    ):
        raise ConfigurationError(
            f"ConsumerOptions.retry_topics must be a tuple of delays in seconds (>= 0), got {value!r}"
        )


def _check_start(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in ("latest", "earliest"):
        raise ConfigurationError(f"ConsumerOptions.start_from must be 'latest' or 'earliest', got {value!r}")


def _check_intake(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in ("cloudevents", "foreign"):
        raise ConfigurationError(f"ConsumerOptions.intake must be 'cloudevents' or 'foreign', got {value!r}")


def _check_sync(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in ("thread", "inline"):
        raise ConfigurationError(f"ConsumerOptions.sync_handlers must be 'thread' or 'inline', got {value!r}")


@frozen
class ConsumerOptions:
    """How a subscription consumes.

    - ``max_retries``: retries after the first failed call (N means at most N+1 calls).
    - ``retry_policy``: a registered policy name: ``"exponential"`` (default, full
      jitter, capped at ``backoff_max_ms``), ``"fixed"`` (``backoff_base_ms`` each time)
      or ``"none"``.
    - ``dlq_topic``: where failed events go; ``None`` means ``<topic>.dlq``.
    - ``concurrency``: handlers running at once. Events with the same key (the same
      partition on partitioned transports) are still handled one after another;
      events without a key go to whichever handler slot is free first.
    - ``prefetch_count``: unacknowledged events the transport may hand out at once.
    - ``start_from``: where a group that does not exist yet starts: ``"latest"`` (events
      published from now on) or ``"earliest"`` (the retained backlog too).
    - ``max_deliveries``: an event redelivered more often than this (because the
      consumer keeps dying while handling it) is dead-lettered without another call.
    - ``handler_timeout``: seconds a single handler call may take; a timeout counts as
      a failure (``HandlerTimeoutError``) and is retried.
    - ``sync_handlers``: where a plain (non-``async``) handler runs. ``"thread"``
      (default): in a worker thread of the subscription (``concurrency`` threads), so
      it never blocks the event loop and ``handler_timeout`` applies; a call that times
      out keeps running in its thread, since Python cannot stop a thread. ``"inline"``:
      on the event loop, for handlers that return at once (cheapest); it cannot be
      combined with ``handler_timeout``.
    - ``max_message_bytes``: a received message whose body is larger is dead-lettered
      with reason ``too_large`` without being decoded; ``None`` uses the bus's
      ``max_message_bytes`` (the same limit publishing enforces).
    - ``retry_topics``: non-blocking retries. One delay in seconds per retry topic,
      e.g. ``(1, 10, 60)``: a failed event is moved to ``<topic>.retry.1`` (handled
      again after 1 s, by the same handler and group), then ``<topic>.retry.2``, and
      so on, and the original is acked, so it does not hold up the events behind it.
      After the last retry topic it is dead-lettered as usual. In this mode each
      topic makes one handler call and ``max_retries`` is not used. Needs a group.
    - ``intake``: what the subscribed topics hold. ``"cloudevents"`` (default): events
      with an envelope (``ce_*`` headers or a structured body); a record without one is
      dead-lettered. ``"foreign"``: records from producers that write no envelope (a
      plain Kafka producer, Kafka Connect, ``redis-cli XADD``, a plain AMQP client) are
      events too: the id comes from the record's position (on RabbitMQ its
      ``message_id``, else a hash of the message), the time from its timestamp, the
      payload from the topic's codec (see docs/interop.md). Records that do carry an
      envelope are read as usual. Retries and dead-letter replays keep the id.
    """

    max_retries: int = field(default=3, validator=_int_at_least(0))
    backoff_base_ms: int = field(default=1000, validator=_int_at_least(0))
    backoff_max_ms: int = field(default=30_000, validator=_int_at_least(0))
    retry_policy: str = "exponential"
    jitter: bool = True
    dlq_topic: str | None = field(default=None, validator=_check_dlq)
    concurrency: int = field(default=1, validator=_int_at_least(1))
    prefetch_count: int = field(default=100, validator=_int_at_least(1))
    start_from: StartFrom = field(default="latest", validator=_check_start)
    max_deliveries: int | None = field(default=None, validator=_optional_positive)
    handler_timeout: float | None = field(default=None, validator=_optional_positive)
    sync_handlers: Literal["thread", "inline"] = field(default="thread", validator=_check_sync)
    max_message_bytes: int | None = field(default=None, validator=_optional_positive)
    retry_topics: tuple[float, ...] = field(
        default=(), converter=_retry_delays, validator=_check_retry_topics
    )
    intake: Literal["cloudevents", "foreign"] = field(default="cloudevents", validator=_check_intake)

    def __attrs_post_init__(self) -> None:
        if self.sync_handlers == "inline" and self.handler_timeout is not None:
            raise ConfigurationError(
                "ConsumerOptions.handler_timeout cannot apply to sync_handlers='inline': an inline "
                "sync handler blocks the event loop and cannot be timed out; use sync_handlers='thread' "
                "or an async handler"
            )

    def dlq_for(self, topic: str) -> str:
        return self.dlq_topic or f"{topic}.dlq"


def retry_topic(topic: str, stage: int) -> str:
    """The name of ``topic``'s retry topic number ``stage`` (from 1)."""
    return f"{topic}.retry.{stage}"


def create_exponential_retry_options(
    max_retries: int = 5,
    base_delay_ms: int = 100,
    max_delay_ms: int = 30_000,
    **kwargs: Any,
) -> ConsumerOptions:
    """Options with exponential backoff and full jitter (the seed's helper)."""
    return ConsumerOptions(
        max_retries=max_retries,
        backoff_base_ms=base_delay_ms,
        backoff_max_ms=max_delay_ms,
        retry_policy="exponential",
        **kwargs,
    )


def create_fixed_retry_options(max_retries: int = 3, delay_ms: int = 1000, **kwargs: Any) -> ConsumerOptions:
    """Options that wait ``delay_ms`` before each retry."""
    return ConsumerOptions(max_retries=max_retries, backoff_base_ms=delay_ms, retry_policy="fixed", **kwargs)
