"""An inbox store on Redis: one key per handled event, expiring with the retention window.

Needs the ``redis`` extra: ``pip install "dotmac-events-outbox[redis]"``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from dotmac.events.config import redact_url
from dotmac.events.errors import ConfigurationError

from .inbox import DEFAULT_RETENTION, InboxStore, _seconds

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisInboxStore"]

log = logging.getLogger(__name__)


class RedisInboxStore(InboxStore):
    """Handled ids as keys ``<prefix>:<group>:<event_id>`` with a time to live.

    ``client`` is a ``redis.asyncio.Redis`` (which stays yours) or a URL
    (``redis://host:6379/0``; the store opens and closes its own client). Redis
    expires old records itself, so there is nothing to purge. Records survive a
    Redis restart only with Redis persistence (AOF or RDB) turned on.
    """

    def __init__(
        self,
        client: Redis | str,
        *,
        prefix: str = "dotmac:inbox",
        retention: float | timedelta = DEFAULT_RETENTION,
    ) -> None:
        try:
            from redis.asyncio import Redis
        except ImportError as exc:
            raise ConfigurationError(
                'the Redis inbox store needs redis-py: pip install "dotmac-events-outbox[redis]"'
            ) from exc
        self.retention = _seconds(retention)
        self._ttl_ms = max(1, int(self.retention * 1000))
        self.prefix = prefix
        if isinstance(client, str):
            self._url = redact_url(client)
            self.client: Redis = Redis.from_url(client)
            self._owns_client = True
        else:
            self._url = "<client>"
            self.client = client
            self._owns_client = False

    def __repr__(self) -> str:
        return f"<RedisInboxStore {self._url} prefix={self.prefix!r}>"

    def _key(self, group: str, event_id: str) -> str:
        return f"{self.prefix}:{group}:{event_id}"

    async def seen(self, group: str, event_id: str) -> bool:
        return bool(await self.client.exists(self._key(group, event_id)))

    async def mark(self, group: str, event_id: str) -> None:
        await self.client.set(self._key(group, event_id), b"1", px=self._ttl_ms)

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> RedisInboxStore:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
