"""Attribute names: the OpenTelemetry messaging semantic conventions plus ours.

Kept as plain strings so the runtime needs only ``opentelemetry-api`` (the
``opentelemetry-semantic-conventions`` package is an SDK dependency).
"""

from __future__ import annotations

__all__ = [
    "CUSTOM",
    "DOTMAC_ATTEMPT",
    "DOTMAC_ATTEMPTS",
    "DOTMAC_DELIVERY_COUNT",
    "DOTMAC_DLQ_REASON",
    "DOTMAC_DLQ_TOPIC",
    "DOTMAC_OUTCOME",
    "DOTMAC_POSITION",
    "DOTMAC_RETRY_DELAY",
    "DOTMAC_TENANT_ID",
    "ERROR_TYPE",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "EVENT_DEAD_LETTER",
    "EVENT_RETRY",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_TYPE",
    "MESSAGING_BATCH_MESSAGE_COUNT",
    "MESSAGING_CLIENT_ID",
    "MESSAGING_CONSUMER_GROUP_NAME",
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_DESTINATION_PARTITION_ID",
    "MESSAGING_DESTINATION_TEMPLATE",
    "MESSAGING_DESTINATION_TEMPORARY",
    "MESSAGING_KAFKA_MESSAGE_KEY",
    "MESSAGING_KAFKA_OFFSET",
    "MESSAGING_MESSAGE_CONVERSATION_ID",
    "MESSAGING_MESSAGE_ID",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_SYSTEM",
]

# Messaging semantic conventions.
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_DESTINATION_TEMPLATE = "messaging.destination.template"
MESSAGING_DESTINATION_TEMPORARY = "messaging.destination.temporary"
MESSAGING_DESTINATION_PARTITION_ID = "messaging.destination.partition.id"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_MESSAGE_CONVERSATION_ID = "messaging.message.conversation_id"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"
MESSAGING_CLIENT_ID = "messaging.client.id"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_KAFKA_MESSAGE_KEY = "messaging.kafka.message.key"
MESSAGING_KAFKA_OFFSET = "messaging.kafka.offset"

# General conventions.
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"

# dotmac-events' own attributes (no convention covers them).
CUSTOM = "dotmac.events."
DOTMAC_TENANT_ID = "dotmac.events.tenant_id"
DOTMAC_DELIVERY_COUNT = "dotmac.events.delivery_count"
DOTMAC_POSITION = "dotmac.events.position"
DOTMAC_OUTCOME = "dotmac.events.outcome"
DOTMAC_ATTEMPTS = "dotmac.events.attempts"
DOTMAC_ATTEMPT = "dotmac.events.attempt"
DOTMAC_RETRY_DELAY = "dotmac.events.retry_delay_s"
DOTMAC_DLQ_TOPIC = "dotmac.events.dlq_topic"
DOTMAC_DLQ_REASON = "dotmac.events.dlq_reason"

# Span event names.
EVENT_RETRY = "dotmac.events.retry"
EVENT_DEAD_LETTER = "dotmac.events.dead_letter"
