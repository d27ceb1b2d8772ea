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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError, SlotNotCoveredError

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
from ._connection import Endpoint, Link, Router
from ._group import GroupSubscription
from ._publisher import Publisher
from ._subscription import BroadcastSubscription, Subscription
from ._writers import AckWriter
from .config import RedisConfig
from .groups import stream_groups, stream_topics

__all__ = ["CAPABILITIES", "DATA_FIELD", "KEY_FIELD", "RELEASED_IDLE_MS", "Client", "RedisTransport"]

log = logging.getLogger(__name__)

# redis-py's client: one server (with its pool) or a Redis Cluster.
Client: TypeAlias = "aioredis.Redis | RedisCluster"


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
        self._client: Client | None = None
        self._nodes: dict[tuple[str, int], Endpoint] = {}
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
        scheme = ("rediss" if c.ssl else "redis") + ("+cluster" if c.cluster else "")
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

    def _cluster_kwargs(self) -> dict[str, Any]:
        """redis-py's settings for its cluster client (the pool's, per node)."""
        kwargs = self._pool_kwargs()
        for name in ("host", "port", "db", "connection_class", "ssl_password"):
            kwargs.pop(name, None)
        if self.config.ssl:
            kwargs["ssl"] = True
        kwargs["max_connections"] = self.config.max_connections
        # A few quick retries inside the cluster client let it follow MOVED replies
        # and find the new primary after a failover; longer outages are retried by
        # the transport's own loops, with their deadlines.
        kwargs["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), 3)
        return kwargs

    def _redis(self) -> Client:
        if self._client is None:
            raise BusStateError("the redis transport is not started")
        return self._client

    # -- Redis Cluster routing -----------------------------------------------------------
    def _node_of(self, key: str) -> Endpoint:
        """The endpoint of the primary serving ``key`` (as the cluster client knows it)."""
        client = self._redis()
        assert isinstance(client, RedisCluster)
        node = client.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no node serves the slot of {key!r} yet")
        address = (node.host, int(node.port))
        endpoint = self._nodes.get(address)
        if endpoint is None:
            endpoint = self._nodes[address] = self.endpoint.at(*address)
        return endpoint

    def _router(self) -> Router:
        """Links for a writer: one server's, or one per cluster node."""
        return Router(self.endpoint, self._node_of if self.config.cluster else None)

    def _resolver(self, key: str) -> Callable[[], Endpoint] | None:
        """For a link that always serves ``key``: picks its node at each connect."""
        if not self.config.cluster:
            return None
        return lambda: self._node_of(key)

    async def _reroute(self, keys: Iterable[str]) -> None:
        """After a failure in cluster mode: let the cluster client learn where ``keys``
        live now (it follows MOVED and, after a lost node, reloads the slot map)."""
        if not self.config.cluster or self._client is None:
            return
        for key in sorted(set(keys)):
            with contextlib.suppress(Exception):
                await self._client.exists(key)

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
        # them as "no connection". A cluster needs one seed that answers.
        seeds = config.seeds() if config.cluster else [(config.host, config.port)]
        first_error: Exception | None = None
        for host, port in seeds:
            probe = Link(self.endpoint.at(host, port))
            try:
                await probe.command("PING")
            except Exception as exc:
                first_error = first_error or exc
                continue
            finally:
                probe.shut()
            first_error = None
            break
        if first_error is not None:
            where = ",".join(f"{h}:{p}" for h, p in seeds)
            raise transport_error(f"cannot connect to Redis at {where}", first_error) from None
        client: Client
        if config.cluster:
            client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in seeds], **self._cluster_kwargs()
            )
            try:
                await client.initialize()
            except Exception as exc:
                await client.aclose()
                raise transport_error("cannot load the slot map of the Redis Cluster", exc) from None
            self._nodes = {}
        else:
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
        slots = self._slot_groups(spec.topics)
        if len(slots) > 1:
            # A blocking read cannot span slots of a cluster: one subscription per slot,
            # sharing the prefetch.
            prefetch = max(1, spec.prefetch // len(slots))
            parts: list[Subscription] = []
            try:
                for topics in slots:
                    part = attrs.evolve(spec, topics=topics, prefetch=prefetch)
                    parts.append(await self._subscribe(part, sink))
            except BaseException:
                for opened in parts:
                    await opened.stop()
                raise
            return _SlotSubscriptions(parts)
        return await self._subscribe(spec, sink)

    def _slot_groups(self, topics: Sequence[str]) -> list[tuple[str, ...]]:
        if not self.config.cluster or len(topics) < 2:
            return [tuple(topics)]
        client = self._redis()
        assert isinstance(client, RedisCluster)
        by_slot: dict[int, list[str]] = {}
        for topic in topics:
            by_slot.setdefault(client.keyslot(self.config.stream_key(topic)), []).append(topic)
        return [tuple(group) for group in by_slot.values()]

    async def _subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> Subscription:
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
            base = self.config.stream_key("")
            if self.config.cluster:  # "{prefix}": keep the opening brace of the hash tag
                return await stream_topics(self._redis(), base[:-1], tagged=True)
            return await stream_topics(self._redis(), base)
        except RedisError as exc:
            raise transport_error("cannot list the topics", exc) from exc


class _SlotSubscriptions(TransportSubscription):
    """One subscription on topics in several slots of a cluster: one part per slot."""

    def __init__(self, parts: Sequence[Subscription]) -> None:
        self.parts = list(parts)

    async def stop(self) -> None:
        await asyncio.gather(*(part.stop() for part in self.parts))
