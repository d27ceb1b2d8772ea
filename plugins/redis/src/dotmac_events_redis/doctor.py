"""Checks of the Redis transport for ``dotmac-events doctor``."""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import RedisError

from dotmac.events.doctor import CheckResult, DoctorCheck, DoctorContext
from dotmac.events.transport import Transport

from .errors import transport_error
from .transport import RedisTransport

__all__ = ["checks"]


async def redis_limits(transport: Transport, ctx: DoctorContext) -> Sequence[CheckResult]:
    """Memory limit and eviction policy, stream trimming, and cleanup of the scratch streams."""
    assert isinstance(transport, RedisTransport)
    client = transport._redis()
    config = transport.config
    results: list[CheckResult] = []
    try:
        memory = await client.info("memory")
        maxmemory = int(memory.get("maxmemory", 0))
        policy = str(memory.get("maxmemory_policy", "?"))
        risky = maxmemory > 0 and policy == "noeviction" and config.max_stream_length is None
        results.append(
            CheckResult(
                "memory",
                False if risky else None,
                f"maxmemory={maxmemory or 'unlimited'} maxmemory-policy={policy}",
                "set max_stream_length so streams are trimmed, or raise maxmemory" if risky else None,
            )
        )
    except RedisError as exc:
        error = transport_error("INFO memory", exc, username=config.username)
        results.append(CheckResult("memory", None, f"not readable: {error}"))
    trim = (
        f"max_stream_length={config.max_stream_length}"
        if config.max_stream_length
        else "streams are not trimmed"
    )
    results.append(CheckResult("stream trimming", None, trim))
    if ctx.scratch:
        keys = [config.stream_key(ctx.topic), config.stream_key(f"{ctx.topic}.dlq")]
        try:
            await client.delete(*keys)
            results.append(CheckResult("cleanup", True, f"deleted {len(keys)} scratch stream(s)"))
        except RedisError as exc:
            error = transport_error("DEL", exc, username=config.username)
            results.append(CheckResult("cleanup", False, str(error), "grant +del on the key prefix"))
    return results


def checks(transport: Transport) -> Sequence[DoctorCheck] | None:
    return [redis_limits] if isinstance(transport, RedisTransport) else None
