"""Consumer groups of a stream, for :meth:`Transport.groups` (``XINFO`` and ``XPENDING``),
and the topics of a key prefix, for :meth:`Transport.topics` (``SCAN ... TYPE stream``).

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
from dotmac.events.errors import ValidationError
from dotmac.events.event import validate_topic

__all__ = ["stream_groups", "stream_topics"]

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


async def stream_topics(
    client: aioredis.Redis | RedisCluster, base: str, *, tagged: bool = False
) -> list[str]:
    """The topics whose streams are keys ``{base}{topic}`` (``base`` is the key prefix,
    plus ``namespace:`` with a namespace), in SCAN order.

    With ``tagged`` (cluster mode) a key is ``{base}{topic}}``: ``base`` starts with the
    hash tag's ``{`` and the key ends with its ``}``; the cluster client scans every
    primary. Keys of other types, keys of other namespaces (a topic cannot contain
    ``:``) and stream names that are not valid topics are left out.
    """
    topics = []
    async for key in client.scan_iter(match=f"{_glob_escape(base)}*", count=1000, _type="stream"):
        name = _text(key)[len(base) :]
        if tagged:
            if not name.endswith("}"):
                continue
            name = name[:-1]
        if ":" in name:
            continue
        try:
            validate_topic(name)
        except ValidationError:
            continue
        topics.append(name)
    return topics


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
