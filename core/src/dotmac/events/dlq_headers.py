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
    "REPLY_ERROR_MESSAGE",
    "REPLY_ERROR_TYPE",
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
