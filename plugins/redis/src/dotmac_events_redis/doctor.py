"""Checks of the Redis transport for ``dotmac-events doctor``."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio.cluster import RedisCluster
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
        if isinstance(client, RedisCluster):
            # Every primary holds streams: the tightest limit counts (first primary's policy).
            infos = [await client.info("memory", target_nodes=node) for node in client.get_primaries()]
            limits = [int(info.get("maxmemory", 0)) for info in infos]
            memory = {
                "maxmemory": min((m for m in limits if m), default=0),
                "maxmemory_policy": infos[0].get("maxmemory_policy", "?") if infos else "?",
            }
        else:
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
    results.append(await _cleanup(transport, ctx))
    return results


async def _cleanup(transport: RedisTransport, ctx: DoctorContext) -> CheckResult:
    client = transport._redis()
    config = transport.config
    keys = [config.stream_key(t) for topic in ctx.scratch_topics for t in (topic, f"{topic}.dlq")]
    try:
        for key in keys:  # one by one: on a cluster they may be in different slots
            await client.delete(key)
        if not ctx.scratch:
            # The round trip's scratch group sits on the user's stream.
            await client.xgroup_destroy(config.stream_key(ctx.topic), ctx.group)
    except RedisError as exc:
        error = transport_error("cleanup", exc, username=config.username)
        return CheckResult("cleanup", False, str(error), "grant +del and +xgroup|destroy on the key prefix")
    done = f"deleted {len(keys)} scratch stream(s)"
    if not ctx.scratch:
        done += f" and group {ctx.group!r} of {ctx.topic!r}"
    return CheckResult("cleanup", True, done)


def checks(transport: Transport) -> Sequence[DoctorCheck] | None:
    return [redis_limits] if isinstance(transport, RedisTransport) else None
