"""Checks of the Kafka transport for ``dotmac-events doctor``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError

from dotmac.events.doctor import CheckResult, DoctorCheck, DoctorContext
from dotmac.events.transport import Transport

from .transport import KafkaTransport

__all__ = ["checks"]


async def kafka_limits(transport: Transport, ctx: DoctorContext) -> Sequence[CheckResult]:
    """Broker limits the bus depends on, the topic's, and cleanup of the scratch topics."""
    assert isinstance(transport, KafkaTransport)
    config = transport.config
    results: list[CheckResult] = []
    limits = await transport.broker_limits()
    low = limits.get("group.min.session.timeout.ms")
    high = limits.get("group.max.session.timeout.ms")
    if low is not None or high is not None:
        inside = (low is None or int(low) <= config.session_timeout_ms) and (
            high is None or config.session_timeout_ms <= int(high)
        )
        results.append(
            CheckResult(
                "session timeout bounds",
                inside,
                f"broker allows {low or '?'}..{high or '?'} ms; "
                f"session_timeout_ms={config.session_timeout_ms}",
                None if inside else "set session_timeout_ms within the broker's bounds",
            )
        )
    else:
        results.append(
            CheckResult(
                "session timeout bounds",
                None,
                f"not reported by the broker; session_timeout_ms={config.session_timeout_ms} "
                "(Apache Kafka's defaults allow 6000..1800000)",
            )
        )
    topic_limits = await transport._topic_limits(ctx.topic)
    broker_max = topic_limits.get("max.message.bytes") or limits.get("message.max.bytes")
    if broker_max is not None:
        fits = config.max_request_size <= int(broker_max) + 1024  # batch overhead
        results.append(
            CheckResult(
                "max message size",
                fits,
                f"topic max.message.bytes={broker_max}; max_request_size={config.max_request_size}",
                None
                if fits
                else f"lower max_request_size to {broker_max} or raise the topic's max.message.bytes",
            )
        )
    retention = topic_limits.get("retention.ms") or limits.get("log.retention.ms")
    if retention is not None:
        results.append(CheckResult("retention", None, f"retention.ms={retention}"))
    results.append(
        CheckResult(
            "idempotent producer", None, "on" if transport.idempotent else "off (the broker refused it)"
        )
    )
    if ctx.acked and transport._admin is not None:
        results.append(await _committed(transport, ctx))
    if ctx.scratch_topics and transport._admin is not None:
        topics = [t for topic in ctx.scratch_topics for t in (topic, f"{topic}.dlq")]
        try:
            await transport._admin.delete_topics(topics)
            results.append(CheckResult("cleanup", True, f"deleted {len(topics)} scratch topic(s)"))
        except KafkaError as exc:
            results.append(
                CheckResult(
                    "cleanup", False, f"{type(exc).__name__}", f"delete topics {topics} (needs DELETE)"
                )
            )
    if not ctx.scratch:
        results.append(
            CheckResult(
                "scratch group",
                None,
                f"{ctx.group!r} keeps its offsets of {ctx.topic!r} until the broker expires them "
                "(offsets.retention.minutes)",
            )
        )
    return results


async def _committed(transport: KafkaTransport, ctx: DoctorContext) -> CheckResult:
    # The subscription committed on stop: the group's offsets show the broker took it.
    assert transport._admin is not None
    try:
        offsets = await transport._admin.list_consumer_group_offsets(ctx.group)
    except (GroupAuthorizationFailedError, TopicAuthorizationFailedError) as exc:
        return CheckResult(
            "commit",
            False,
            f"cannot read the group's offsets ({type(exc).__name__})",
            "grant DESCRIBE on the group",
        )
    except (KafkaError, asyncio.TimeoutError) as exc:
        # Not every Kafka-protocol broker answers the admin client's OffsetFetch.
        return CheckResult(
            "commit", None, f"not checked: the broker did not list the offsets ({type(exc).__name__})"
        )
    partitions = [tp.partition for tp, meta in offsets.items() if tp.topic == ctx.topic and meta.offset > 0]
    if partitions:
        return CheckResult(
            "commit", True, f"group {ctx.group!r} committed on partition(s) {sorted(partitions)}"
        )
    return CheckResult(
        "commit",
        False,
        f"group {ctx.group!r} has no committed offset",
        "grant READ on the group (offset commits)",
    )


def checks(transport: Transport) -> Sequence[DoctorCheck] | None:
    return [kafka_limits] if isinstance(transport, KafkaTransport) else None
