"""The Redis Streams transport behind ``redis://`` and ``rediss://``: the public
:class:`RedisTransport`, its lifecycle, and reading a topic back.

One stream per topic. Consumer groups are Redis consumer groups (``_group``);
broadcast subscriptions read with ``XREAD`` (``_subscription``). Acknowledgements
and releases of all subscriptions go through one writer task that coalesces them
(``_writers``); publishes go through another (``_publisher``). Those hot paths run on
connections the transport opens itself (``_connection``); redis-py's client and
pool carry the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from dotmac.events import GroupInfo, Message, SubscriptionSpec, Transport, TransportSubscription
from dotmac.events.errors import BusStateError, ConfigurationError
from dotmac.events.transport import DeliverySink

from . import _scripts
from ._common import (
    CAPABILITIES,
    DATA_FIELD,
    KEY_FIELD,
    RELEASED_IDLE_MS,
    entry_message,
    text,
    transport_error,
)
from ._connection import Endpoint, Link
from ._group import GroupSubscription
from ._publisher import Publisher
from ._subscription import BroadcastSubscription, Subscription
from ._writers import AckWriter
from .config import RedisConfig
from .groups import stream_groups, stream_topics

__all__ = ["CAPABILITIES", "DATA_FIELD", "KEY_FIELD", "RELEASED_IDLE_MS", "RedisTransport"]

log = logging.getLogger(__name__)


class RedisTransport(Transport):
    """Redis Streams: one stream per topic, consumer groups, reclaim of abandoned entries.

    ``counters`` (see :meth:`stats`) count what was published, trimmed, trimmed
    unread, reclaimed, released and lost.
    """

    name = "redis"
    capabilities = CAPABILITIES

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.endpoint = Endpoint(config)
        # Used by the core when ConsumerOptions.max_deliveries is None.
        self.default_max_deliveries = config.max_deliveries
        self._client: aioredis.Redis | None = None
        self._pool: BlockingConnectionPool | None = None
        self._scripts: dict[str, Any] = {}
        self._subs: set[Subscription] = set()
        self._closing = asyncio.Event()
        self._publisher = Publisher(self)
        self._acks = AckWriter(self)
        self._started = False
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "published",
                "trimmed",
                "trimmed_unread",
                "trimmed_unacknowledged",
                "trim_deferred",
                "reclaim_runs",
                "reclaimed",
                "released",
                "withdrawn",
                "pending_entries_lost",
                "reconnects",
            ),
            0,
        )
        self.over_limit: dict[str, int] = {}

    def describe(self) -> Mapping[str, object]:
        return self.config.describe()

    def __repr__(self) -> str:
        c = self.config
        scheme = "rediss" if c.ssl else "redis"
        return f"<RedisTransport {scheme}://{c.host}:{c.port}/{c.db} prefix={c.key_prefix!r}>"

    def stats(self) -> dict[str, Any]:
        """Counters since start, and the streams currently kept over their cap."""
        return {**self.counters, "over_limit": dict(self.over_limit)}

    # -- connections ---------------------------------------------------------------------
    def _pool_kwargs(self) -> dict[str, Any]:
        """redis-py's settings for the pool (group administration, recovery, reads)."""
        c = self.config
        kwargs: dict[str, Any] = {
            "host": c.host,
            "port": c.port,
            "db": c.db,
            "username": c.username,
            "password": c.password,
            "socket_timeout": c.socket_timeout,
            "socket_connect_timeout": c.socket_connect_timeout,
            "socket_keepalive": True,
            "client_name": c.client_name,
            # Reconnects and retries are done here, with knowledge of what is safe.
            "retry": Retry(NoBackoff(), 0),
            # RESP2 on every redis-py version: replies parsed here keep one shape.
            "protocol": 2,
        }
        if c.ssl:
            kwargs.update(
                connection_class=SSLConnection,
                ssl_ca_certs=c.ssl_ca_certs,
                ssl_certfile=c.ssl_certfile,
                ssl_keyfile=c.ssl_keyfile,
                ssl_cert_reqs=c.ssl_cert_reqs,
                ssl_check_hostname=c.ssl_check_hostname,
            )
            if c.ssl_password is not None:
                if "ssl_password" not in inspect.signature(SSLConnection.__init__).parameters:
                    # redis-py's asyncio connections take a key password from 7.2 on;
                    # older ones would fail later with a TypeError about a keyword.
                    raise ConfigurationError(
                        "RedisConfig.ssl_password needs redis-py 7.2 or newer "
                        f"(installed: {redis.__version__}); upgrade it or use an unencrypted key"
                    )
                kwargs["ssl_password"] = c.ssl_password
        return kwargs

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BusStateError("the redis transport is not started")
        return self._client

    def _script(self, name: str) -> Any:
        return self._scripts[name]

    async def _touch(
        self, key: str, group: str, consumer: str, ids: Sequence[str], idle_ms: int
    ) -> tuple[int, list[str]]:
        """Set the idle time of entries ``consumer`` owns; returns how many, and the
        ids another consumer owns now."""
        if not ids:
            return 0, []
        touched, taken = await self._scripts["touch"](
            keys=[key], args=[group, consumer, idle_ms, *ids], client=self._redis()
        )
        return int(touched), [text(i) for i in taken]

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        config = self.config
        if config.ssl and config.ssl_insecure:
            log.warning(
                "TLS to %s:%s runs with certificate or host name checks OFF (ssl_insecure=True)",
                config.host,
                config.port,
            )
        pool_kwargs = self._pool_kwargs()
        # One connection of the transport's own first: its errors (refused
        # credentials, rejected certificate) are precise, where a pool may report
        # them as "no connection".
        probe = Link(self.endpoint)
        try:
            await probe.command("PING")
        except Exception as exc:
            where = f"{config.host}:{config.port}"
            raise transport_error(f"cannot connect to Redis at {where}", exc) from None
        finally:
            probe.shut()
        pool = BlockingConnectionPool(
            max_connections=config.max_connections,
            timeout=config.socket_connect_timeout,
            **pool_kwargs,
        )
        client = aioredis.Redis(connection_pool=pool)
        self._pool = pool
        self._client = client
        self._scripts = {
            "trim": client.register_script(_scripts.TRIM),
            "claim_one": client.register_script(_scripts.CLAIM_ONE),
            "touch": client.register_script(_scripts.TOUCH),
            "reclaim": client.register_script(_scripts.RECLAIM),
            "own_pending": client.register_script(_scripts.OWN_PENDING),
            "forget_idle_consumers": client.register_script(_scripts.FORGET_IDLE_CONSUMERS),
        }
        self._closing = asyncio.Event()
        self._publisher = Publisher(self)
        self._acks = AckWriter(self)
        self._publisher.start()
        self._acks.start()
        self._started = True
        log.debug("redis transport connected: %s", self.describe())

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        for sub in list(self._subs):
            await sub.close_now()
        # Publishes and acks already accepted are written before the connections go.
        for drain in (self._publisher.drain, self._acks.drain):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drain(), self.config.socket_timeout)
        self._closing.set()
        await self._publisher.stop()
        await self._acks.stop()
        for sub in list(self._subs):
            await sub.close_now()
        client, pool = self._client, self._pool
        self._client = self._pool = None
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.disconnect()

    def __del__(self, _warnings: Any = warnings) -> None:
        if getattr(self, "_started", False):
            _warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)

    def _forget(self, sub: Subscription) -> None:
        if isinstance(sub, GroupSubscription) and sub._outstanding:
            return  # its lease task still guards deliveries the core holds
        self._subs.discard(sub)

    # -- transport API -------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        if not self._started:
            raise BusStateError("the redis transport is not started")
        if not messages:
            return
        await self._publisher.submit(messages)

    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        if not self._started:
            raise BusStateError("the redis transport is not started")
        sub: GroupSubscription | BroadcastSubscription
        if spec.group is None:
            sub = BroadcastSubscription(self, spec, sink)
        else:
            sub = GroupSubscription(self, spec, sink)
        await sub.open()
        self._subs.add(sub)
        return sub

    async def read(self, topic: str, *, limit: int = 100) -> list[Message]:
        key = self.config.stream_key(topic)
        try:
            entries = await self._redis().xrange(key, "-", "+", count=limit)
        except RedisError as exc:
            raise transport_error(f"cannot read {topic!r}", exc) from exc
        return [entry_message(topic, entry_id, fields) for entry_id, fields in entries or ()]

    async def groups(self, topic: str) -> list[GroupInfo]:
        try:
            return await stream_groups(self._redis(), self.config.stream_key(topic), topic)
        except RedisError as exc:
            raise transport_error(f"cannot list the groups of {topic!r}", exc) from exc

    async def topics(self) -> list[str]:
        try:
            return await stream_topics(self._redis(), self.config.stream_key(""))
        except RedisError as exc:
            raise transport_error("cannot list the topics", exc) from exc
