"""Header names the core adds to dead letters and to error replies.

Both the runner (which writes dead letters and replies) and the dead-letter queue
API (which reads them back) use these names; they are part of the wire format.
"""

from __future__ import annotations

__all__ = [
    "DLQ_ATTEMPTS",
    "DLQ_BODY_OMITTED",
    "DLQ_CONSUMER_GROUP",
    "DLQ_ERROR_MESSAGE",
    "DLQ_ERROR_TYPE",
    "DLQ_FAILED_AT",
    "DLQ_HEADERS",
    "DLQ_ORIGINAL_TOPIC",
    "DLQ_REASON",
    "HOLD_UNTIL",
    "REPLAY_COUNT",
    "REPLAY_GROUP",
    "REPLY_ERROR_MESSAGE",
    "REPLY_ERROR_TYPE",
    "RETRY_ATTEMPTS",
    "RETRY_FIRST_ERROR_MESSAGE",
    "RETRY_FIRST_ERROR_TYPE",
    "RETRY_HEADERS",
    "RETRY_ORIGINAL_TOPIC",
    "SCHEDULE_DELIVER_AT",
    "SCHEDULE_DELIVER_TO",
    "SCHEDULE_HEADERS",
]

DLQ_ORIGINAL_TOPIC = "x-dlq-original-topic"
DLQ_CONSUMER_GROUP = "x-dlq-consumer-group"
DLQ_ERROR_TYPE = "x-dlq-error-type"
DLQ_ERROR_MESSAGE = "x-dlq-error-message"
DLQ_ATTEMPTS = "x-dlq-attempts"
DLQ_FAILED_AT = "x-dlq-failed-at"
DLQ_REASON = "x-dlq-reason"
DLQ_BODY_OMITTED = "x-dlq-body-omitted"
"""Set (to the original size in bytes) when a too-large message's body could not be
written to the dead-letter topic and the dead letter carries an empty body instead."""

DLQ_HEADERS = (
    DLQ_ORIGINAL_TOPIC,
    DLQ_CONSUMER_GROUP,
    DLQ_ERROR_TYPE,
    DLQ_ERROR_MESSAGE,
    DLQ_ATTEMPTS,
    DLQ_FAILED_AT,
    DLQ_REASON,
    DLQ_BODY_OMITTED,
)

REPLY_ERROR_TYPE = "x-reply-error-type"
"""On a reply: the request's handler failed (or returned something that cannot be a
reply); the requester raises :class:`~dotmac.events.errors.RemoteHandlerError`."""
REPLY_ERROR_MESSAGE = "x-reply-error-message"

HOLD_UNTIL = "x-hold-until"
"""RFC 3339 UTC time before which a runner does not handle the message: it holds the
delivery (un-acked) until then. Every message of a delay or retry topic carries it."""

RETRY_ORIGINAL_TOPIC = "x-retry-original-topic"
"""On a message of a retry topic: the topic the event was first consumed from."""
RETRY_ATTEMPTS = "x-retry-attempts"
"""On a message of a retry topic: handler calls made so far."""
RETRY_FIRST_ERROR_TYPE = "x-retry-first-error-type"
RETRY_FIRST_ERROR_MESSAGE = "x-retry-first-error-message"

RETRY_HEADERS = (
    RETRY_ORIGINAL_TOPIC,
    RETRY_ATTEMPTS,
    RETRY_FIRST_ERROR_TYPE,
    RETRY_FIRST_ERROR_MESSAGE,
    HOLD_UNTIL,
)

SCHEDULE_DELIVER_AT = "x-deliver-at"
"""On a message of a delay topic: RFC 3339 UTC time it is due at its target."""
SCHEDULE_DELIVER_TO = "x-deliver-to"
"""On a message of a delay topic: the topic it is delivered to when due."""

SCHEDULE_HEADERS = (SCHEDULE_DELIVER_AT, SCHEDULE_DELIVER_TO, HOLD_UNTIL)

REPLAY_GROUP = "x-replay-group"
"""On a replayed dead letter: the only consumer group that handles it (empty: only
broadcast subscriptions); every other group's runner acks it without a handler call."""
REPLAY_COUNT = "x-replay-count"
"""On a replayed dead letter: how many times it was replayed."""
