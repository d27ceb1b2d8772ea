"""Consumer groups of a stream, for :meth:`Transport.groups` (``XINFO`` and ``XPENDING``).

Redis 7 reports a group's lag itself (``XINFO GROUPS`` field ``lag``: entries of the
stream not yet delivered to the group). It is nil when Redis cannot count it, for
instance after entries were deleted or trimmed from the middle of what the group has
still to read; :attr:`GroupInfo.lag` is then ``None`` rather than a guess. Redis 6
does not report lag at all (``None`` too).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from dotmac.events import GroupInfo

__all__ = ["stream_groups"]

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def stream_groups(client: aioredis.Redis | RedisCluster, key: str, topic: str) -> list[GroupInfo]:
    """The consumer groups of the stream ``key`` (the stream of ``topic``), by name.

    Redis errors propagate as they are; the transport turns them into its errors.
    """
    try:
        groups = await client.xinfo_groups(key)
        infos = []
        for group in sorted(groups, key=lambda g: _text(g["name"])):
            name = _text(group["name"])
            consumers = await client.xinfo_consumers(key, name)
            pending = int(group["pending"])
            oldest: float | None = None
            if pending:
                # The lowest pending id was handed out first (or re-handed on reclaim).
                first = await client.xpending_range(key, name, "-", "+", 1)
                if first:
                    oldest = int(first[0]["time_since_delivered"]) / 1000.0
            lag = group.get("lag")
            infos.append(
                GroupInfo(
                    topic=topic,
                    group=name,
                    members=tuple(sorted(_text(c["name"]) for c in consumers)),
                    pending=pending,
                    lag=None if lag is None else int(lag),
                    oldest_pending_age=oldest,
                )
            )
    except ResponseError as exc:
        # A topic nobody published or subscribed to (or deleted meanwhile) has no groups.
        if "no such key" in str(exc).lower():
            return []
        raise
    return infos
