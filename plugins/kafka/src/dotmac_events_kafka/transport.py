"""The Kafka transport behind ``kafka://`` (aiokafka).

Publishing waits for the broker's acknowledgement of every record. Consuming
commits an offset only when that record and every earlier record of its partition
were acked by the core (handled or dead-lettered); see ``docs/transports/kafka.md``
for the commit, rebalance and positioning rules this module implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CommitFailedError,
    IllegalStateError,
    InvalidSessionTimeoutError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NoBrokersAvailable,
    NodeNotReadyError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner, murmur2

from dotmac.events import (
    Capabilities,
    Delivery,
    GroupInfo,
    Message,
    PartialPublishError,
    PublishError,
    SubscriptionSpec,
    Transport,
    TransportError,
    TransportSubscription,
    TransportUnavailableError,
)
from dotmac.events.errors import AuthenticationError, BusStateError, ConfigurationError, EventBusError
from dotmac.events.transport import DeliverySink
from dotmac.events.wire import headers_from_pairs

from . import errors as _errors
from .config import KafkaConfig
from .groups import topic_groups

__all__ = ["CAPABILITIES", "KafkaTransport", "build_ssl_context"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    persistent=True,
    consumer_groups=True,
    partitions=True,
    ordering="key",
    request_reply=True,
    replay_backlog=True,
    readable=True,
    restartable=True,
    batch_publish=True,
    introspection=True,
)

# Broker-side errors of CreateTopics that mean the request itself is wrong.
_BAD_TOPIC_REQUEST = {37, 38, 39, 40}  # invalid partitions, replication factor, assignment, config
_TOPIC_EXISTS = 36
_UNREACHABLE = (
    KafkaConnectionError,
    NodeNotReadyError,
    NoBrokersAvailable,
    RequestTimedOutError,
    KafkaTimeoutError,
)

# Broker settings worth quoting in an error or a diagnosis.
_BROKER_LIMITS = frozenset(
    {
        "group.min.session.timeout.ms",
        "group.max.session.timeout.ms",
        "message.max.bytes",
        "auto.create.topics.enable",
        "log.retention.ms",
        "log.retention.hours",
        "log.retention.bytes",
        "transaction.max.timeout.ms",
    }
)

_DEFAULT_PARTITIONER = DefaultPartitioner()

# Brokers (bootstrap lists) that refused an idempotent producer in this process: later
# transports skip the attempt and its error log.
_idempotence_refused: set[str] = set()


class _HideSaslBytes(logging.Filter):
    """aiokafka logs every request at DEBUG, SaslAuthenticate included, whose bytes hold
    the PLAIN password in clear: such records keep their place in the log, not their
    contents."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.levelno <= logging.DEBUG
            and isinstance(args, tuple)
            and any(type(arg).__name__.startswith("SaslAuthenticate") for arg in args)
        ):
            record.msg = "%s (SASL authentication bytes hidden)"
            record.args = (type(args[-1]).__name__,)
        return True


logging.getLogger("aiokafka.conn").addFilter(_HideSaslBytes())

# How long one fetch call may block, so the loop notices new assignments and rewinds.
_POLL_MS = 100


# Keys up to this size have their hash remembered (4,096 of them, least recently used
# first out): keys such as customer or device ids repeat, and aiokafka's murmur2 is pure
# Python (about 3 µs per key, a tenth of that from the cache).
_HASHED_KEY_BYTES = 128


@functools.lru_cache(maxsize=4096)
def _cached_key_hash(key: bytes) -> int:
    return _key_hash(key)


def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for_key(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """aiokafka's default partitioner (the Java client's murmur2 mapping: a key's partition
    is the same from every Kafka client), with the hash of short keys cached."""
    if key is None:
        return int(_DEFAULT_PARTITIONER(key, all_partitions, available))
    hashed = _cached_key_hash(key) if len(key) <= _HASHED_KEY_BYTES else _key_hash(key)
    return all_partitions[hashed % len(all_partitions)]


def _unavailable(what: str, exc: BaseException) -> TransportUnavailableError:
    return TransportUnavailableError(f"{what}: Kafka broker unreachable ({type(exc).__name__}: {exc})")


def _publish_error(what: str, exc: BaseException, fatal: EventBusError | None = None) -> EventBusError:
    if fatal is not None:
        return fatal
    if isinstance(exc, EventBusError):
        return exc
    if isinstance(exc, (*_UNREACHABLE, asyncio.TimeoutError)):
        return _unavailable(what, exc)
    retriable = bool(getattr(exc, "retriable", False))
    return PublishError(f"{what}: {type(exc).__name__}: {exc}", retriable=retriable)


async def _accepts_connections(servers: str, timeout: float = 2.0) -> bool:
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host or server, int(port or 9092)), timeout
            )
        except (OSError, ValueError, asyncio.TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class _StaticTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER with a fixed token (from config or the environment)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "<static OAuth token>"


def build_ssl_context(config: KafkaConfig) -> ssl.SSLContext | None:
    """The TLS context for ``config``: its ``ssl_context``, or one that verifies the
    broker against ``ssl_cafile`` (system CAs without it) and presents the client
    certificate, if any. ``None`` when the protocol has no TLS."""
    if config.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    if config.ssl_context is not None:
        context: ssl.SSLContext = config.ssl_context
        return context
    try:
        context = create_ssl_context(
            cafile=config.ssl_cafile,
            certfile=config.ssl_certfile,
            keyfile=config.ssl_keyfile,
            password=config.resolved_ssl_password(),
        )
    except FileNotFoundError as exc:
        raise ConfigurationError(f"KafkaConfig: TLS file not found: {exc.filename}") from None
    except (OSError, ssl.SSLError) as exc:
        # The message of these errors names the failing step, never the key password.
        raise ConfigurationError(f"KafkaConfig: cannot load the TLS files: {type(exc).__name__}") from None
    if not config.ssl_check_hostname:
        log.warning("Kafka TLS host name checking is off (ssl_check_hostname=False)")
        context.check_hostname = False
    return context


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Connection and security keyword arguments shared by aiokafka's clients."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "metadata_max_age_ms": config.metadata_max_age_ms,
        "request_timeout_ms": config.request_timeout_ms,
        "retry_backoff_ms": config.retry_backoff_ms,
        "security_protocol": config.security_protocol,
        "ssl_context": build_ssl_context(config),
    }
    mechanism = config.mechanism
    if mechanism is None:
        return options
    options["sasl_mechanism"] = mechanism
    if mechanism == "OAUTHBEARER":
        provider = config.sasl_oauth_token_provider
        if provider is None:
            token = config.resolved_oauth_token()
            if token is None:
                raise ConfigurationError(
                    "KafkaConfig: OAUTHBEARER needs sasl_oauth_token, sasl_oauth_token_provider "
                    "or $DOTMAC_EVENTS_KAFKA_OAUTH_TOKEN"
                )
            provider = _StaticTokenProvider(token)
        options["sasl_oauth_token_provider"] = provider
        return options
    username, password = config.resolved_username(), config.resolved_password()
    if username is None or password is None:
        raise ConfigurationError(
            f"KafkaConfig: SASL {mechanism} needs sasl_username and sasl_password "
            "(or $DOTMAC_EVENTS_KAFKA_SASL_USERNAME / $DOTMAC_EVENTS_KAFKA_SASL_PASSWORD)"
        )
    options["sasl_plain_username"] = username
    options["sasl_plain_password"] = password
    return options


def record_to_message(record: Any) -> Message:
    """A consumed aiokafka record as a :class:`Message` (position ``partition:offset``)."""
    # surrogateescape keeps invalid UTF-8 visible to the core, which dead-letters it.
    pairs = record.headers or ()
    try:
        headers = {name: value.decode("utf-8", "surrogateescape") for name, value in pairs}
    except AttributeError:  # a header without a value (None): read as ""
        headers = {
            name: value.decode("utf-8", "surrogateescape") if value is not None else ""
            for name, value in pairs
        }
    if len(headers) != len(pairs):
        # A name is repeated: headers_from_pairs keeps it once if the values agree and
        # records it as ambiguous (dead-lettered by the core) if they do not.
        headers = headers_from_pairs(
            (name, value.decode("utf-8", "surrogateescape") if value is not None else "")
            for name, value in pairs
        )
    key = record.key.decode("utf-8", "surrogateescape") if record.key is not None else None
    return Message(
        topic=record.topic,
        value=record.value if record.value is not None else b"",
        key=key,
        headers=headers,
        position=f"{record.partition}:{record.offset}",
        timestamp=_record_time(record.timestamp),
    )


# The last record timestamp converted: records of one producer batch share their
# millisecond, and a datetime is immutable, so consecutive records share the object.
_last_time: tuple[int | None, datetime | None] = (None, None)


def _record_time(millis: int | None) -> datetime | None:
    global _last_time
    last_millis, last = _last_time
    if millis == last_millis:
        return last
    # -1 (or None) is a record written without a timestamp by an old client.
    if millis is None or millis < 0:
        return None
    try:
        converted = datetime.fromtimestamp(millis / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    _last_time = (millis, converted)
    return converted


# -- commit tracking -----------------------------------------------------------------------
_PENDING, _ACKED, _RELEASED = 0, 1, 2


class _Tracker:
    """Offsets of one assigned partition between the committed point and the fetch position.

    ``commit_to`` only moves over a prefix of acked entries, so a pending or released
    record blocks committing past it. A tracker dies with its assignment (revocation,
    shutdown); acks of its entries are then ignored.
    """

    __slots__ = (
        "alive",
        "commit_to",
        "committed",
        "entries",
        "floor",
        "pending",
        "positioned",
        "redeliveries",
        "revoking",
        "rewind_to",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.entries: deque[_KafkaDelivery] = deque()
        self.alive = True
        self.positioned = False
        self.revoking = False
        self.commit_to: int | None = None
        self.committed: int | None = None
        self.floor = 0
        self.pending = 0
        self.rewind_to: int | None = None
        self.redeliveries: dict[int, int] = {}

    def place(self, offset: int, *, committed: bool) -> None:
        self.floor = offset
        self.commit_to = offset
        self.committed = offset if committed else None
        self.positioned = True

    def accepts(self, offset: int) -> bool:
        return (
            self.alive
            and self.positioned
            and not self.revoking
            and self.rewind_to is None
            and offset >= self.floor
        )

    def add(self, sub: _KafkaSubscription, offset: int, ordering_key: tuple[str, int]) -> _KafkaDelivery:
        count = self.redeliveries.pop(offset, 0) + 1 if self.redeliveries else 1
        entry = _KafkaDelivery(sub, self, offset, count, ordering_key)
        self.entries.append(entry)
        self.pending += 1
        self.floor = offset + 1
        return entry

    def advance(self) -> bool:
        moved = False
        entries = self.entries
        while entries and entries[0].state == _ACKED:
            self.commit_to = entries.popleft().offset + 1
            moved = True
        return moved

    def cut(self, offset: int) -> None:
        """Forget entries from ``offset`` on: they will be fetched and delivered again."""
        kept: deque[_KafkaDelivery] = deque()
        for entry in self.entries:
            if entry.offset < offset:
                kept.append(entry)
                continue
            entry.alive = False
            if entry.state == _PENDING:
                self.pending -= 1
            self.redeliveries[entry.offset] = entry.delivery_count
        self.entries = kept
        self.floor = offset
        self.rewind_to = None
        self.advance()

    def kill(self) -> None:
        self.alive = False
        for entry in self.entries:
            entry.alive = False
        self.entries.clear()
        self.pending = 0


class _KafkaDelivery(Delivery):
    """One delivered record, also its tracker's entry: its offset and whether the core
    acked or released it. ``alive`` turns false when its tracker forgets it."""

    __slots__ = ("_sub", "alive", "delivery_count", "message", "offset", "ordering_key", "state", "tracker")

    message: Message

    def __init__(
        self,
        sub: _KafkaSubscription,
        tracker: _Tracker,
        offset: int,
        count: int,
        ordering_key: tuple[str, int],
    ) -> None:
        self._sub = sub
        self.tracker = tracker
        self.offset = offset
        self.delivery_count = count
        self.ordering_key = ordering_key
        self.state = _PENDING
        self.alive = True

    @property
    def withdrawn(self) -> bool:
        # Revoked partition, or a seek back re-fetches it: not to be handled from here.
        return not self.alive

    async def ack(self) -> None:
        self._sub._settle(self, acked=True)

    def ack_nowait(self) -> None:
        # Settling is in-process (the commit loop commits later): done here, no task.
        self._sub._settle(self, acked=True)

    async def release(self) -> None:
        self._sub._settle(self, acked=False)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: _KafkaSubscription) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._sub._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._sub._on_assigned(assigned)


class _KafkaSubscription(TransportSubscription):
    """One aiokafka consumer: a group member, or (``group=None``) a broadcast reader of
    every partition. Its consumer stays open after :meth:`stop` until every delivery
    the core holds is acked or released, so late acks are still committed."""

    def __init__(self, transport: KafkaTransport, spec: SubscriptionSpec, sink: DeliverySink) -> None:
        config = transport.config
        self._transport = transport
        self._config = config
        self._spec = spec
        self._sink = sink
        self._group = spec.group
        self._consumer = AIOKafkaConsumer(
            **transport._client_options,
            group_id=spec.group,
            enable_auto_commit=False,
            auto_offset_reset=spec.start_from,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            fetch_min_bytes=config.fetch_min_bytes,
            isolation_level=config.isolation_level,
            max_partition_fetch_bytes=config.max_partition_fetch_bytes,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            rebalance_timeout_ms=config.rebalance_timeout_ms,
            max_poll_interval_ms=config.max_poll_interval_ms,
        )
        self._trackers: dict[TopicPartition, _Tracker] = {}
        self._state = "new"
        self._needs_positioning = False
        self._positioned = asyncio.Event()
        self._dirty = asyncio.Event()
        self._settled = asyncio.Event()  # set by each settle while a _drain waits
        self._draining = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._outstanding = 0
        # Set while fewer than ``prefetch`` deliveries are outstanding.
        self._room = asyncio.Event()
        self._room.set()
        self._commit_lock = asyncio.Lock()
        self._fetch_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        self._consumer_started = False
        self.commits = 0
        self.commit_failures = 0
        self._last_error: BaseException | None = None

    def __repr__(self) -> str:
        spec = self._spec
        return f"<KafkaSubscription {spec.consumer_name} topics={list(spec.topics)} group={self._group!r}>"

    @property
    def assignment(self) -> set[TopicPartition]:
        """Partitions this subscription holds right now."""
        return {tp for tp, tr in self._trackers.items() if tr.alive and not tr.revoking}

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        consumer = self._consumer
        try:
            await consumer.start()
        except _UNREACHABLE as exc:
            raise _unavailable(f"cannot subscribe to {list(self._spec.topics)}", exc) from exc
        except KafkaError as exc:
            fatal = await self._fatal(exc)
            if fatal is not None:
                raise fatal from exc
            raise TransportError(f"cannot subscribe to {list(self._spec.topics)}: {exc!r}") from exc
        self._consumer_started = True
        self._state = "running"
        if self._group is not None:
            consumer.subscribe(list(self._spec.topics), listener=_Listener(self))
        else:
            tps: list[TopicPartition] = []
            for topic in self._spec.topics:
                partitions = await self._transport._partitions(topic)
                tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
            consumer.assign(tps)
            self._on_assigned(tps)
        name = self._spec.consumer_name
        self._fetch_task = asyncio.create_task(self._fetch_loop(), name=f"dotmac-kafka-fetch-{name}")
        if self._group is not None:
            self._commit_task = asyncio.create_task(self._commit_loop(), name=f"dotmac-kafka-commit-{name}")
        ready = asyncio.create_task(self._positioned.wait())
        timeout = self._config.join_timeout_ms / 1000
        try:
            done, _ = await asyncio.wait(
                {ready, self._fetch_task}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
        if self._positioned.is_set():
            log.debug("subscription %s is live on %s", name, sorted(self.assignment))
            return
        if self._fetch_task in done and self._fetch_task.exception() is not None:
            cause = self._fetch_task.exception()
            if isinstance(cause, EventBusError):
                raise cause
            raise TransportError(f"subscription to {list(self._spec.topics)} failed") from cause
        last = f"; retried fetching, last error: {self._last_error!r}" if self._last_error is not None else ""
        raise TransportUnavailableError(
            f"subscription to {list(self._spec.topics)} was not assigned and positioned "
            f"within {timeout}s{last}"
        )

    async def stop(self) -> None:
        if self._state != "running":
            return
        self._state = "stopping"
        await _cancel(self._fetch_task)
        self._fetch_task = None
        self._finisher = asyncio.create_task(
            self._finish(), name=f"dotmac-kafka-finish-{self._spec.consumer_name}"
        )

    async def close(self) -> None:
        """Stop, commit what is committable and leave the group without waiting for acks."""
        if self._state in ("new", "running"):
            if self._state == "new":
                self._state = "stopping"
            else:
                await self.stop()
        if self._finisher is None:
            self._finisher = asyncio.create_task(self._finish())
        await self._finisher

    async def _finish(self) -> None:
        closing = self._transport._closing
        try:
            if self._outstanding and not closing.is_set():
                waiters = [asyncio.create_task(self._idle.wait()), asyncio.create_task(closing.wait())]
                try:
                    await asyncio.wait(waiters, return_when="FIRST_COMPLETED")
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._state = "closing"
        await _cancel(self._commit_task)
        self._commit_task = None
        if self._group is not None and self._consumer_started:
            await self._commit(list(self._trackers.values()), "shutdown")
        for tracker in self._trackers.values():
            tracker.kill()
        self._trackers.clear()
        try:
            await self._consumer.stop()
        except Exception as exc:
            log.warning("closing the Kafka consumer of %s failed: %r", self._spec.consumer_name, exc)
        self._state = "closed"
        self._transport._subs.discard(self)

    async def _fatal(self, exc: BaseException) -> EventBusError | None:
        what = f"subscription to {list(self._spec.topics)}" + (
            f" in group {self._group!r}" if self._group else ""
        )
        limits: Mapping[str, str] = {}
        if isinstance(exc, InvalidSessionTimeoutError):
            limits = await self._transport.broker_limits()
        return _errors.classify(
            exc,
            what=what,
            session_timeout_ms=self._config.session_timeout_ms,
            group=self._group,
            topics=self._spec.topics,
            username=self._config.resolved_username(),
            broker_limits=limits,
        )

    # -- assignment ----------------------------------------------------------------------
    def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in assigned:
            self._trackers[tp] = _Tracker(tp)
        self._needs_positioning = True
        log.info("%s assigned %s", self._spec.consumer_name, sorted(assigned))

    async def _on_revoked(self, revoked: Collection[TopicPartition]) -> None:
        trackers = [tr for tp in revoked if (tr := self._trackers.get(tp)) is not None]
        for tracker in trackers:
            tracker.revoking = True
        if trackers and self._state in ("running", "stopping"):
            # Let handlers of these partitions finish, so their offsets are committed
            # before another member resumes from them.
            await self._drain(trackers, self._config.revoke_timeout_ms / 1000)
        if trackers and self._group is not None:
            await self._commit(trackers, "revocation")
        left = sum(tr.pending for tr in trackers)
        for tracker in trackers:
            tracker.kill()
            if self._trackers.get(tracker.tp) is tracker:
                del self._trackers[tracker.tp]
        if left:
            log.info(
                "%s gave up %d partition(s) with %d record(s) still in a handler; they are redelivered",
                self._spec.consumer_name,
                len(trackers),
                left,
            )

    async def _drain(self, trackers: Sequence[_Tracker], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._draining += 1
        try:
            while any(tr.pending for tr in trackers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._settled.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), remaining)
        finally:
            self._draining -= 1

    async def _position(self) -> None:
        """Seek every newly assigned partition: committed offset, else the start position."""
        self._needs_positioning = False
        consumer = self._consumer
        fresh = [tr for tr in self._trackers.values() if tr.alive and not tr.positioned]
        latest: list[_Tracker] = []
        for tracker in fresh:
            committed = await consumer.committed(tracker.tp) if self._group is not None else None
            if committed is not None:
                self._place(tracker, committed, committed=True)
            elif self._spec.start_from == "earliest":
                offsets = await consumer.beginning_offsets([tracker.tp])
                self._place(tracker, offsets[tracker.tp], committed=False)
            else:
                latest.append(tracker)
        if latest:
            await self._seek_to_highwater(latest)
        if self._group is not None and any(tr.commit_to != tr.committed for tr in fresh if tr.alive):
            # Committing the start position makes it the group's: a member that takes
            # the partition over later resumes here instead of resolving "latest" again.
            await self._commit(fresh, "positioning")
        if all(tr.positioned for tr in self._trackers.values() if tr.alive):
            self._positioned.set()

    async def _seek_to_highwater(self, trackers: Sequence[_Tracker]) -> None:
        # The high watermark of a fetch response is exact; ListOffsets(latest) is not on
        # every Kafka-protocol broker, so "latest" is taken from a fetch.
        consumer = self._consumer
        deadline = time.monotonic() + self._config.join_timeout_ms / 1000
        wait_ms = max(_POLL_MS, 2 * self._config.fetch_max_wait_ms)
        while True:
            assigned = consumer.assignment()
            missing = [
                tr.tp
                for tr in trackers
                if tr.alive and tr.tp in assigned and consumer.highwater(tr.tp) is None
            ]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise TransportUnavailableError(f"no high watermark for {missing} from the broker")
            await consumer.getmany(*missing, timeout_ms=wait_ms)  # records before "now" are not ours
        for tracker in trackers:
            if tracker.alive:
                highwater = consumer.highwater(tracker.tp)
                if highwater is not None:
                    self._place(tracker, highwater, committed=False)

    def _place(self, tracker: _Tracker, offset: int, *, committed: bool) -> None:
        if not tracker.alive:
            return
        try:
            self._consumer.seek(tracker.tp, offset)
        except IllegalStateError:
            return  # revoked meanwhile
        tracker.place(offset, committed=committed)

    # -- fetching ------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        backoff = 0.1
        while True:
            try:
                if self._needs_positioning:
                    await self._position()
                self._apply_rewinds()
                # Everything buffered, not prefetch_count: the client fetches no
                # partition of a broker while another's records wait in its buffer
                # (for 100 ms; then it fetches the rest alone, and a caught-up rest is
                # parked by the broker for fetch_max_wait_ms). Emptied, it fetches
                # every partition at once while the core handles this batch.
                batch = await consumer.getmany(timeout_ms=_POLL_MS)
            except asyncio.CancelledError:
                raise
            except (KafkaError, TransportError) as exc:
                if _errors.is_fatal(exc):
                    fatal = await self._fatal(exc)
                    if not self._positioned.is_set() and fatal is not None:
                        # Not live yet: subscribe() fails with the cause instead of
                        # waiting out join_timeout_ms on an answer that will not change.
                        raise fatal from exc
                    log.error("%s; retrying in %.1fs", fatal, backoff)
                    await asyncio.sleep(backoff)  # a grant may be added while we run
                    backoff = min(backoff * 2, 5.0)
                    continue
                if any(not tr.positioned for tr in self._trackers.values()):
                    self._needs_positioning = True
                self._last_error = exc
                log.warning(
                    "fetching %s for %s failed, retrying in %.1fs: %r",
                    list(self._spec.topics),
                    self._spec.consumer_name,
                    backoff,
                    exc,
                )
                await asyncio.sleep(backoff)  # pacing retries against a failing broker
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            await self._hand_over(batch)

    async def _hand_over(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> None:
        """Hand a fetched batch to the core, record by record, within the prefetch window."""
        prefetch = self._spec.prefetch
        room = self._room
        sink = self._sink
        for tp, records in batch.items():
            # One partition is one ordered log: the core keeps its records in one lane.
            ordering_key = (tp.topic, tp.partition)
            for record in records:
                while self._outstanding >= prefetch:
                    room.clear()
                    await room.wait()
                # Looked up per record: a rebalance during an await may replace it.
                tracker = self._trackers.get(tp)
                if tracker is None or not tracker.accepts(record.offset):
                    # Revoked, not positioned yet, or about to seek back: the records
                    # are fetched again from the position that follows.
                    break
                delivery = tracker.add(self, record.offset, ordering_key)
                delivery.message = record_to_message(record)
                if not self._outstanding:
                    self._idle.clear()
                self._outstanding += 1
                try:
                    await sink(delivery)
                except asyncio.CancelledError:
                    self._settle(delivery, acked=False)
                    raise
                except Exception:
                    # The core did not take it: keep the commit point before it and
                    # fetch it again.
                    log.exception("handing %s to the core failed", delivery.message.position)
                    self._settle(delivery, acked=False)
                    break

    def _apply_rewinds(self) -> None:
        for tracker in self._trackers.values():
            if tracker.rewind_to is None or not tracker.alive:
                continue
            offset = tracker.rewind_to
            tracker.cut(offset)
            try:
                self._consumer.seek(tracker.tp, offset)
            except IllegalStateError:
                continue
            log.debug("%s seeks %s back to released offset %d", self._spec.consumer_name, tracker.tp, offset)

    def _settle(self, entry: _KafkaDelivery, *, acked: bool) -> None:
        if entry.state != _PENDING:
            return
        entry.state = _ACKED if acked else _RELEASED
        self._outstanding -= 1
        if self._outstanding == self._spec.prefetch - 1:
            # The fetch loop waits for room only with prefetch outstanding.
            self._room.set()
        if self._outstanding <= 0:
            self._outstanding = 0
            self._idle.set()
        tracker = entry.tracker
        if entry.alive:
            tracker.pending -= 1
            if acked:
                if tracker.advance() and self._group is not None:
                    self._dirty.set()
            elif (
                self._state == "running"
                and not tracker.revoking
                and (tracker.rewind_to is None or entry.offset < tracker.rewind_to)
            ):
                # Released while running (e.g. a dead letter could not be written):
                # fetch it again rather than leave a hole behind the commit point.
                tracker.rewind_to = entry.offset
        if self._draining:
            self._settled.set()

    # -- committing ----------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        interval = self._config.commit_interval_ms / 1000
        while self._state != "closing":
            await self._dirty.wait()
            self._dirty.clear()
            await self._commit(list(self._trackers.values()), "interval")
            if interval:
                await asyncio.sleep(interval)  # rate limit: acks in between ride on the next commit

    async def _commit(self, trackers: Iterable[_Tracker], reason: str) -> bool:
        async with self._commit_lock:
            chosen = [
                tr
                for tr in trackers
                if tr.alive and tr.positioned and tr.commit_to is not None and tr.commit_to != tr.committed
            ]
            if not chosen:
                return True
            offsets = {tr.tp: tr.commit_to for tr in chosen}
            try:
                await asyncio.wait_for(self._consumer.commit(offsets), self._config.request_timeout_ms / 1000)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on: whoever owns these partitions now resumes from the
                # last successful commit, so records after it are redelivered, not lost.
                self.commit_failures += 1
                log.info("commit on %s skipped (%s): %s", reason, type(exc).__name__, offsets)
                return False
            except (KafkaError, asyncio.TimeoutError) as exc:
                self.commit_failures += 1
                log.warning("commit on %s failed, will retry: %r", reason, exc)
                self._dirty.set()
                return False
            for tracker in chosen:
                tracker.committed = offsets[tracker.tp]
            self.commits += 1
            log.debug("committed on %s: %s", reason, offsets)
            return True


async def _cancel(task: asyncio.Task[Any] | None, timeout: float = 10.0) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a cancellation gets lost.

    ``asyncio.wait_for`` on Python < 3.12 can swallow a cancel that arrives as its
    inner call completes; the task then carries on, so a single cancel is not enough.
    """
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("background task %s did not stop within %.1fs", task.get_name(), timeout)
            return
        await asyncio.wait({task}, timeout=min(0.5, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.debug("background task %s had failed: %r", task.get_name(), task.exception())


class KafkaTransport(Transport):
    """``kafka://host:port[,host:port]``: Kafka (or a Kafka-protocol broker) through aiokafka."""

    name = "kafka"
    capabilities = CAPABILITIES

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._client_options: dict[str, Any] = {}
        self._known_topics: set[str] = set()
        self._topic_lock: asyncio.Lock | None = None
        self._subs: set[_KafkaSubscription] = set()
        self._closing = asyncio.Event()
        self._start_lock: asyncio.Lock | None = None
        self.idempotent = False
        self._transaction_lock: asyncio.Lock | None = None

    def describe(self) -> Mapping[str, object]:
        config = self.config
        return {
            "transport": "kafka",
            "bootstrap_servers": config.bootstrap_servers,
            "security_protocol": config.security_protocol,
            "sasl_mechanism": config.mechanism,
            "acks": config.acks,
            "idempotence": self.idempotent,
            "transactional": self.config.transactional_id is not None,
            "compression_type": config.compression_type,
        }

    def __repr__(self) -> str:
        return f"<KafkaTransport {self.config.bootstrap_servers} started={self._producer is not None}>"

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BusStateError("the kafka transport is not started")
        return self._producer

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._producer is not None:
            return
        self._client_options = client_options(self.config)
        self._closing = asyncio.Event()
        self._topic_lock = asyncio.Lock()
        admin = AIOKafkaAdminClient(**self._client_options)
        try:
            await admin.start()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await admin.close()
            refused = await self._sasl_refused(exc)
            if refused is not None:
                raise refused from exc
            if isinstance(exc, _UNREACHABLE):
                raise _unavailable(f"cannot connect to {self.config.bootstrap_servers}", exc) from exc
            if isinstance(exc, KafkaError):
                raise self._start_error(exc) from exc
            raise
        try:
            self._producer = await self._start_producer()
        except BaseException:
            with contextlib.suppress(Exception):
                await admin.close()
            raise
        self._admin = admin
        log.debug("kafka transport started: %s", self.describe())

    def _start_error(self, exc: KafkaError) -> EventBusError:
        what = f"cannot connect to {self.config.bootstrap_servers}"
        fatal = _errors.classify(exc, what=what, username=self.config.resolved_username())
        return fatal if fatal is not None else TransportError(f"{what}: {exc!r}")

    async def _sasl_refused(self, exc: BaseException) -> AuthenticationError | None:
        """A SASL login that failed, told apart from an unreachable broker.

        aiokafka reports a broker that closes the connection during SASL as "Unable to
        bootstrap" (as if nothing listened), and a SCRAM server answer carrying an
        error as a ``KeyError`` of its parser. When SASL is on and the port accepts
        connections, the login is what failed."""
        mechanism = self.config.mechanism
        if mechanism is None or not isinstance(exc, (KafkaConnectionError, KeyError, ValueError)):
            return None
        if isinstance(exc, KafkaConnectionError) and not await _accepts_connections(
            self.config.bootstrap_servers
        ):
            return None
        user = self.config.resolved_username()
        who = f" of user {user!r}" if user else ""
        tls = " or the TLS handshake" if self.config.security_protocol == "SASL_SSL" else ""
        return AuthenticationError(
            f"cannot connect to {self.config.bootstrap_servers}: the broker accepts connections but "
            f"the SASL {mechanism} login{who}{tls} failed; check sasl_username, sasl_password and "
            "sasl_mechanism (and that the listener speaks SASL)",
            permission="authenticate",
        )

    async def broker_limits(self) -> dict[str, str]:
        """Broker settings that bound what a client may ask for (session timeouts,
        record size, topic creation, retention), as far as the broker reports them
        through DescribeConfigs; empty when it reports none or refuses."""
        admin = self._admin
        if admin is None:
            return {}
        try:
            cluster = await admin.describe_cluster()
            node = cluster["brokers"][0]["node_id"]
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, str(node))])
        except (KafkaError, IndexError, KeyError, asyncio.TimeoutError) as exc:
            log.debug("broker settings unavailable: %r", exc)
            return {}
        limits: dict[str, str] = {}
        for response in responses:
            for resource in response.resources:
                for entry in resource[4]:
                    if entry[0] in _BROKER_LIMITS and entry[1] is not None:
                        limits[entry[0]] = entry[1]
        return limits

    def _producer_options(self) -> dict[str, Any]:
        config = self.config
        return {
            **self._client_options,
            "acks": config.acks if config.acks == "all" else int(config.acks),
            "compression_type": config.compression_type,
            "linger_ms": config.linger_ms,
            "max_batch_size": config.max_batch_size,
            "max_request_size": config.max_request_size,
            "partitioner": partition_for_key,
        }

    async def _start_producer(self) -> AIOKafkaProducer:
        config = self.config
        if config.transactional_id is not None:
            return await self._start_transactional_producer()
        want = config.enable_idempotence if config.enable_idempotence is not None else config.acks == "all"
        if want and config.enable_idempotence is None and config.bootstrap_servers in _idempotence_refused:
            log.debug("idempotence off for %s: refused earlier", config.bootstrap_servers)
            want = False
        if want:
            producer = AIOKafkaProducer(**self._producer_options(), enable_idempotence=True)
            try:
                await producer.start()
            except _UNREACHABLE as exc:
                await producer.stop()
                raise _unavailable(f"cannot connect to {config.bootstrap_servers}", exc) from exc
            except KafkaError as exc:
                await producer.stop()
                if _errors.is_fatal(exc) and not isinstance(exc, ClusterAuthorizationFailedError):
                    raise self._start_error(exc) from exc
                if config.enable_idempotence:
                    raise TransportError(
                        f"the broker at {config.bootstrap_servers} refused an idempotent producer "
                        f"({type(exc).__name__}); set enable_idempotence=None to fall back"
                    ) from exc
                _idempotence_refused.add(config.bootstrap_servers)
                log.warning(
                    "the broker at %s cannot run an idempotent producer (%s); publishing with "
                    "acks=%s without idempotence: a retried send may store a record twice",
                    config.bootstrap_servers,
                    type(exc).__name__,
                    config.acks,
                )
            except BaseException:
                await producer.stop()
                raise
            else:
                self.idempotent = True
                return producer
        producer = AIOKafkaProducer(**self._producer_options(), enable_idempotence=False)
        await self._start_client(producer)
        self.idempotent = False
        return producer

    async def _start_client(self, producer: AIOKafkaProducer, refused: str | None = None) -> None:
        """Start ``producer``; stop it and raise the classified error if that fails.
        ``refused`` names the setting to blame when the broker refuses without a reason."""
        try:
            await producer.start()
        except BaseException as exc:
            await producer.stop()
            if isinstance(exc, _UNREACHABLE):
                raise _unavailable(f"cannot connect to {self.config.bootstrap_servers}", exc) from exc
            if not isinstance(exc, KafkaError):
                raise
            error = self._start_error(exc)
            if refused is not None and not isinstance(error, (ConfigurationError, AuthenticationError)):
                error = ConfigurationError(
                    f"the broker at {self.config.bootstrap_servers} refused a producer with {refused} "
                    f"({type(exc).__name__}); set {refused}=None",
                    setting=refused,
                )
            raise error from exc

    async def _start_transactional_producer(self) -> AIOKafkaProducer:
        config = self.config
        producer = AIOKafkaProducer(
            **self._producer_options(),
            transactional_id=config.transactional_id,
            transaction_timeout_ms=config.transaction_timeout_ms,
        )
        await self._start_client(producer, refused="transactional_id")
        self.idempotent = True
        self._transaction_lock = asyncio.Lock()
        return producer

    async def close(self) -> None:
        producer = self._producer
        if producer is None:
            return
        self._closing.set()
        for sub in list(self._subs):
            try:
                await sub.close()
            except Exception as exc:
                log.warning("closing %r failed: %r", sub, exc)
        self._producer = None
        try:
            await producer.stop()  # flushes what is still batched
        finally:
            admin, self._admin = self._admin, None
            if admin is not None:
                await admin.close()

    # -- topics --------------------------------------------------------------------------
    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that do not exist yet (``auto_create_topics``)."""
        missing = {t for t in topics if t not in self._known_topics}
        if not missing:
            return
        config = self.config
        if not config.auto_create_topics:
            self._known_topics.update(missing)
            return
        assert self._topic_lock is not None
        assert self._admin is not None
        async with self._topic_lock:
            missing = {t for t in missing if t not in self._known_topics}
            if not missing:
                return
            new = [
                NewTopic(
                    name=topic,
                    num_partitions=config.num_partitions,
                    replication_factor=config.replication_factor,
                    topic_configs=dict(config.topic_config),
                )
                for topic in sorted(missing)
            ]
            try:
                response = await self._admin.create_topics(new, timeout_ms=config.request_timeout_ms)
            except _UNREACHABLE as exc:
                raise _unavailable(f"cannot create topics {sorted(missing)}", exc) from exc
            except KafkaError as exc:
                raise TransportError(
                    f"cannot create topics {sorted(missing)}: {exc!r}", retriable=exc.retriable
                ) from exc
            for item in response.topic_errors:
                topic, code = item[0], item[1]
                message = item[2] if len(item) > 2 else None
                if code in (0, _TOPIC_EXISTS):
                    if code == 0:
                        log.info(
                            "created topic %s (%d partitions, replication %d)",
                            topic,
                            config.num_partitions,
                            config.replication_factor,
                        )
                    self._known_topics.add(topic)
                    continue
                error = for_code(code)
                if code in _BAD_TOPIC_REQUEST:
                    raise ConfigurationError(
                        f"the broker refused to create topic {topic!r}: {error.__name__}: {message}"
                    )
                # E.g. no permission to create topics: the topic may exist anyway, and a
                # publish to a topic that does not exist fails on its own.
                log.warning(
                    "could not create topic %s (%s: %s); using it as it is", topic, error.__name__, message
                )
                self._known_topics.add(topic)

    async def _partitions(self, topic: str) -> set[int]:
        producer = self._require()
        try:
            partitions = await producer.partitions_for(topic)
        except _UNREACHABLE as exc:
            raise _unavailable(f"no metadata for topic {topic!r}", exc) from exc
        return set(partitions or ())

    async def _existing_topics(self) -> set[str]:
        assert self._admin is not None
        try:
            return set(await self._admin.list_topics())
        except _UNREACHABLE as exc:
            raise _unavailable("cannot list topics", exc) from exc

    # -- publishing ----------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        producer = self._require()
        if not messages:
            return
        await self.ensure_topics(m.topic for m in messages)
        lock = self._transaction_lock
        if lock is None:
            await self._send(producer, messages)
            return
        # One transaction per call: the batch becomes visible to read_committed
        # consumers all together, or (on any failure) not at all.
        async with lock:
            try:
                async with producer.transaction():
                    await self._send(producer, messages, atomic=True)
            except EventBusError:
                raise
            except KafkaError as exc:
                what = f"transaction of {len(messages)} record(s) to {messages[0].topic!r} aborted"
                raise _publish_error(what, exc, await self._publish_fatal(what, exc, messages)) from exc

    async def _send(
        self, producer: AIOKafkaProducer, messages: Sequence[Message], *, atomic: bool = False
    ) -> None:
        """Send ``messages``; ``atomic`` inside a transaction, which stores all or none."""
        futures: list[asyncio.Future[Any]] = []
        failure: BaseException | None = None
        sticky: dict[str, list[int]] = {}  # topic -> [partition, bytes sent to it]
        for message in messages:
            try:
                partition = None
                if message.key is None:
                    partition = await self._sticky_partition(message, sticky)
                future = await producer.send(
                    message.topic,
                    value=message.value,
                    # surrogateescape writes back the exact bytes of a received message
                    # that was not UTF-8, so its dead letter carries what arrived.
                    key=message.key.encode("utf-8", "surrogateescape") if message.key is not None else None,
                    headers=[
                        (name, value.encode("utf-8", "surrogateescape"))
                        for name, value in message.headers.items()
                    ],
                    partition=partition,
                )
            except Exception as exc:
                failure = exc
                break
            futures.append(future)
        # Await every accepted record even after a failure, so none is left unobserved.
        results: list[Any]
        if len(futures) == 1:
            # One record (a lone publish): its future, without gather's own future. Only
            # a cancelled caller cancels it (aiokafka fails record futures, never cancels
            # them), and then CancelledError propagates, as it does out of gather.
            try:
                results = [await futures[0]]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*futures, return_exceptions=True) if futures else []
        errors = [r for r in results if isinstance(r, BaseException)]
        if failure is None and errors:
            failure = errors[0]
        if failure is not None:
            confirmed = len(results) - len(errors)
            what = (
                f"{len(messages) - confirmed} of {len(messages)} record(s) to {messages[0].topic!r} "
                "not confirmed"
            )
            if isinstance(failure, (*_UNREACHABLE, asyncio.TimeoutError)):
                # aiokafka retried the send until the request timeout before giving up.
                what += f" (retried for up to request_timeout_ms={self.config.request_timeout_ms})"
            error = _publish_error(what, failure, await self._publish_fatal(what, failure, messages))
            if confirmed and not atomic:
                # Part of the batch is stored: say exactly which, so a retry of the rest
                # duplicates nothing.
                stored = [not isinstance(r, BaseException) for r in results]
                stored += [False] * (len(messages) - len(stored))
                ids = [m.headers.get("ce_id") or f"#{i}" for i, m in enumerate(messages)]
                raise PartialPublishError(
                    f"{error} (stored {confirmed} of {len(messages)}; retry only PartialPublishError.unsent)",
                    sent=tuple(i for i, ok in zip(ids, stored, strict=True) if ok),
                    unsent=tuple(i for i, ok in zip(ids, stored, strict=True) if not ok),
                    retriable=bool(getattr(error, "retriable", False)),
                ) from error
            raise error from failure

    async def _publish_fatal(
        self, what: str, exc: BaseException, messages: Sequence[Message]
    ) -> EventBusError | None:
        topics = sorted({m.topic for m in messages})
        config = self.config
        missing_topic = (KafkaTimeoutError, UnknownTopicOrPartitionError, TransportUnavailableError)
        if isinstance(exc, missing_topic) and not config.auto_create_topics:
            # aiokafka waits for metadata of a topic that does not exist until it times
            # out: a missing topic must not read as an unreachable broker.
            with contextlib.suppress(TransportError):
                existing = await self._existing_topics()
                missing = [t for t in topics if t not in existing]
                if missing:
                    self._known_topics.difference_update(missing)
                    return _errors.unknown_topic(what, missing)
        limits: Mapping[str, str] = {}
        if isinstance(exc, MessageSizeTooLargeError):
            if "max_request_size" in str(exc):
                # aiokafka's own check, before sending: our limit, not the broker's.
                return ConfigurationError(
                    f"{what}: a record is larger than max_request_size={config.max_request_size}; "
                    "raise KafkaConfig.max_request_size (and the topic's max.message.bytes) or "
                    "publish smaller events",
                    setting="max_request_size",
                )
            limits = await self._topic_limits(topics[0])
        return _errors.classify(
            exc,
            what=what,
            max_request_size=config.max_request_size,
            topics=topics,
            username=config.resolved_username(),
            broker_limits=limits,
        )

    async def _topic_limits(self, topic: str) -> dict[str, str]:
        if self._admin is None:
            return {}
        try:
            responses = await self._admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        except (KafkaError, asyncio.TimeoutError):
            return {}
        return {
            entry[0]: entry[1]
            for response in responses
            for resource in response.resources
            for entry in resource[4]
            if entry[0] in ("max.message.bytes", "retention.ms", "retention.bytes", "cleanup.policy")
        }

    async def _sticky_partition(self, message: Message, sticky: dict[str, list[int]]) -> int | None:
        # Keyless records of one publish call stay on one partition until a batch's
        # worth of bytes went there (Kafka's sticky partitioning), so a batch keeps
        # its order and fills few requests.
        state = sticky.get(message.topic)
        if state is None or state[1] >= self.config.max_batch_size:
            partitions = sorted(await self._partitions(message.topic))
            if not partitions:
                return None
            previous = state[0] if state is not None else None
            choices = [p for p in partitions if p != previous] or partitions
            state = sticky[message.topic] = [random.choice(choices), 0]  # noqa: S311 - spreading load
        state[1] += len(message.value)
        return state[0]

    # -- consuming -----------------------------------------------------------------------
    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        self._require()
        await self.ensure_topics(spec.topics)
        sub = _KafkaSubscription(self, spec, sink)
        self._subs.add(sub)
        try:
            await sub.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await sub.close()
            self._subs.discard(sub)
            raise
        return sub

    async def groups(self, topic: str) -> list[GroupInfo]:
        self._require()
        if topic not in await self._existing_topics():
            return []
        assert self._admin is not None
        return await topic_groups(self._admin, self._client_options, topic, await self._partitions(topic))

    async def topics(self) -> list[str]:
        """The broker's topics, without its internal ones (``__consumer_offsets``,
        ``__transaction_state``, anything else starting with ``__``)."""
        self._require()
        return [t for t in await self._existing_topics() if not t.startswith("__")]

    async def read(self, topic: str, *, limit: int = 100) -> list[Message]:
        """Up to ``limit`` records of ``topic`` from the beginning, oldest first.

        Partitions are merged by record timestamp (then dead-letter time, partition
        and offset). A topic that does not exist reads as empty and is not created.
        """
        self._require()
        if limit <= 0 or topic not in await self._existing_topics():
            return []
        partitions = await self._partitions(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer = AIOKafkaConsumer(
            **self._client_options,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
            max_poll_records=max(limit, 1),
        )
        records: list[Any] = []
        try:
            await consumer.start()
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            counts = dict.fromkeys(tps, 0)
            deadline = time.monotonic() + self.config.request_timeout_ms / 1000
            wait_ms = max(_POLL_MS, 2 * self.config.fetch_max_wait_ms)
            while True:
                open_tps = []
                for tp in tps:
                    highwater = consumer.highwater(tp)
                    if counts[tp] >= limit:
                        continue
                    if highwater is not None and await consumer.position(tp) >= highwater:
                        continue
                    open_tps.append(tp)
                if not open_tps:
                    break
                if time.monotonic() > deadline:
                    raise TransportUnavailableError(f"reading {topic!r} did not reach its end in time")
                batch = await consumer.getmany(*open_tps, timeout_ms=wait_ms, max_records=limit)
                for tp, got in batch.items():
                    take = got[: limit - counts[tp]]
                    counts[tp] += len(take)
                    records.extend(take)
        except _UNREACHABLE as exc:
            raise _unavailable(f"cannot read {topic!r}", exc) from exc
        finally:
            await consumer.stop()
        messages = [(record, record_to_message(record)) for record in records]
        messages.sort(
            key=lambda pair: (
                pair[0].timestamp,
                pair[1].headers.get("x-dlq-failed-at", ""),
                pair[0].partition,
                pair[0].offset,
            )
        )
        return [message for _record, message in messages[:limit]]
