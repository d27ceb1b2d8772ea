"""The publisher: writes publishes, coalescing concurrent ones, and trims streams.

A publish that finds nothing queued or being written goes out in the caller's task;
those that come meanwhile are batched by the writer task (one script call per
single-stream batch, a ``MULTI`` block otherwise). Streams are then trimmed per the
configured policy before the publish returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dotmac.events import (
    AuthenticationError,
    ConfigurationError,
    Message,
    PublishError,
    TransportError,
    TransportUnavailableError,
)
from dotmac.events.bus import REPLY_TOPIC_PREFIX

from . import _scripts
from ._common import Backoff, entry_fields, redis_message, retriable, transport_error
from ._connection import Link, Router, Script
from ._writers import Coalescer

if TYPE_CHECKING:
    from .transport import RedisTransport

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

ADD = Script(_scripts.ADD)
# Dead letters are never trimmed: this header marks them.
_DLQ_MARKER = "x-dlq-original-topic"
_MAX_PUBLISH_BATCH = 1000


class NotReplicated(Exception):
    """``WAIT`` returned before ``wait_replicas`` replicas confirmed the writes."""


class Publisher(Coalescer[Sequence[Message]]):
    """Coalesces concurrent publishes into ``MULTI`` pipelines; then trims."""

    def __init__(self, transport: RedisTransport) -> None:
        super().__init__(transport, "dotmac-events-redis-publisher")
        self._warned: dict[str, float] = {}

    async def submit(self, messages: Sequence[Message]) -> None:
        if self._quiet():
            await self._write_now(messages)
        else:
            await self._enqueue(messages)

    def _take(self) -> list[tuple[Sequence[Message], asyncio.Future[None]]]:
        batch: list[tuple[Sequence[Message], asyncio.Future[None]]] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0][0]) <= _MAX_PUBLISH_BATCH):
            item = self._queue.popleft()
            batch.append(item)
            size += len(item[0])
        return batch

    async def _write(self, batch: list[tuple[Sequence[Message], asyncio.Future[None]]], link: Router) -> None:
        transport = self._transport
        config = transport.config
        flat: list[tuple[int, str, Message]] = []
        dead_letter_keys: set[str] = set()
        reply_keys: set[str] = set()
        stream_keys: dict[str, str] = {}  # topic -> stream key, worked out once per topic
        for index, (messages, _future) in enumerate(batch):
            for message in messages:
                topic = message.topic
                key = stream_keys.get(topic)
                if key is None:
                    key = stream_keys[topic] = config.stream_key(topic)
                    if topic.startswith(REPLY_TOPIC_PREFIX):
                        reply_keys.add(key)
                flat.append((index, key, message))
                if _DLQ_MARKER in message.headers:
                    dead_letter_keys.add(key)
        # Streams to keep within their cap: ordinary ones at max_stream_length, dead-letter
        # ones at dead_letter_max_length (never trimmed when that is None).
        limits: dict[str, int] = {}
        if config.max_stream_length is not None:
            for key in set(stream_keys.values()) - dead_letter_keys - reply_keys:
                limits[key] = config.max_stream_length
        if config.dead_letter_max_length is not None:
            for key in dead_letter_keys:
                limits[key] = config.dead_letter_max_length
        trim_keys = sorted(limits)
        deadline = time.monotonic() + config.publish_timeout
        backoff: Backoff | None = None  # made at the first failure
        while True:
            try:
                results = await self._send(flat, reply_keys, trim_keys, link)
            except Exception as exc:
                if retriable(exc) and time.monotonic() < deadline and not transport._closing.is_set():
                    log.debug("publish failed, retrying: %r", exc)
                    if backoff is None:
                        backoff = Backoff(config.reconnect_backoff_max)
                    await asyncio.sleep(backoff.next())
                    await transport._reroute(key for _i, key, _m in flat)
                    continue
                what = "publish failed"
                if retriable(exc):
                    what += f" (retried for {config.publish_timeout}s)"
                error: Exception = transport_error(what, exc)
                if isinstance(exc, NotReplicated):
                    error = PublishError(str(exc), retriable=True)
                elif isinstance(error, TransportError) and not isinstance(
                    error, (TransportUnavailableError, AuthenticationError)
                ):
                    error = PublishError(str(error), retriable=error.retriable)
                for _messages, future in batch:
                    if not future.done():
                        future.set_exception(error)
                return
            break
        failed: dict[int, BaseException] = {}
        for (index, key, _message), result in zip(flat, results, strict=False):
            if isinstance(result, Exception) and index not in failed:
                refused = transport_error(f"Redis refused the entry for stream {key!r}", result)
                failed[index] = (
                    refused
                    if isinstance(refused, (ConfigurationError, AuthenticationError))
                    else PublishError(f"Redis refused the entry for stream {key!r}: {redis_message(result)}")
                )
        if trim_keys:
            # Trim before confirming, so a publish returns with the stream within its
            # policy (a failed trim is logged and retried at the next publish).
            lengths = results[len(results) - len(trim_keys) :]
            for key, length in zip(trim_keys, lengths, strict=True):
                maxlen = limits[key]
                if isinstance(length, int) and length > maxlen + max(1, maxlen // 100):
                    await self._trim(key, maxlen)
        published = 0
        for index, (messages, future) in enumerate(batch):
            if index in failed:
                if not future.done():
                    future.set_exception(failed[index])
            else:
                published += len(messages)
                if not future.done():
                    future.set_result(None)
        transport.counters["published"] += published

    async def _send(
        self, flat: list[tuple[int, str, Message]], reply_keys: set[str], trim_keys: list[str], link: Router
    ) -> list[Any]:
        """Write the entries; results per entry (``None`` or an error), then the lengths
        of ``trim_keys``. With ``wait_replicas`` the writes are then confirmed by
        replicas (``WAIT`` on each connection written to) or :class:`NotReplicated`
        is raised."""
        keys = {key for _i, key, _m in flat}
        if len(keys) == 1:
            (key,) = keys
            node = link.for_key(key)
            messages = [m for _i, _k, m in flat]
            results = await self._send_stream(key, messages, key in reply_keys, bool(trim_keys), node)
            await self._wait_replicas([node])
            return results
        if not link.cluster:
            node = link.for_key(next(iter(keys)))
            ttl = int(self._transport.config.reply_ttl)
            commands: list[tuple[Any, ...]] = [("XADD", key, "*", *entry_fields(m)) for _i, key, m in flat]
            commands += [("EXPIRE", key, ttl) for key in sorted(reply_keys)]
            commands += [("XLEN", key) for key in trim_keys]
            results = await node.pipeline(commands, transaction=True)
            del results[len(flat) : len(flat) + len(reply_keys)]
            await self._wait_replicas([node])
            return results
        # Redis Cluster: streams live in different slots, so each stream is written on
        # its own (a MULTI block cannot span slots). If one fails, the whole batch is
        # retried, and streams written before the failure get those entries twice.
        by_key: dict[str, list[Message]] = {}
        for _i, key, message in flat:
            by_key.setdefault(key, []).append(message)
        written: dict[str, list[Any]] = {}
        used: list[Link] = []
        for key, messages in by_key.items():
            node = link.for_key(key)
            written[key] = await self._send_stream(key, messages, key in reply_keys, key in trim_keys, node)
            if node not in used:
                used.append(node)
        await self._wait_replicas(used)
        cursors = dict.fromkeys(by_key, 0)
        results = []
        for _i, key, _m in flat:
            results.append(written[key][cursors[key]])
            cursors[key] += 1
        results += [written[key][-1] for key in trim_keys]
        return results

    async def _send_stream(
        self, key: str, messages: list[Message], reply: bool, trim: bool, link: Link
    ) -> list[Any]:
        """Write ``messages`` to one stream: ``None`` per entry, then its length if ``trim``."""
        if len(messages) == 1 and not trim and not reply:
            # Nothing to trim or expire: a plain XADD does it.
            await link.command("XADD", key, "*", *entry_fields(messages[0]))
            return [None]
        # One script call, atomic like MULTI, and it returns the length for the trim check.
        args: list[Any] = [int(self._transport.config.reply_ttl) if reply else 0]
        for message in messages:
            fields = entry_fields(message)
            args.append(len(fields))
            args.extend(fields)
        length = await link.eval(ADD, [key], args)
        return [None] * len(messages) + ([int(length)] if trim else [])

    async def _wait_replicas(self, links: Sequence[Link]) -> None:
        config = self._transport.config
        wanted = config.wait_replicas
        if not wanted:
            return
        for link in links:
            confirmed = int(await link.command("WAIT", wanted, config.wait_timeout_ms))
            if confirmed < wanted:
                raise NotReplicated(
                    f"written to {link.endpoint.host}:{link.endpoint.port} but confirmed by {confirmed} of "
                    f"wait_replicas={wanted} replicas within wait_timeout_ms={config.wait_timeout_ms}; "
                    "a retry may store the events twice"
                )

    async def _trim(self, key: str, maxlen: int) -> None:
        transport = self._transport
        policy = transport.config.trim_policy
        try:
            result = await transport._script("trim")(
                keys=[key], args=[maxlen, policy], client=transport._redis()
            )
            removed, kept, unread, unacked = (int(v) for v in result)
        except Exception as exc:
            log.warning("trimming %s failed (retried at the next publish): %r", key, exc)
            return
        counters = transport.counters
        counters["trimmed"] += removed
        counters["trimmed_unread"] += unread
        counters["trimmed_unacknowledged"] += unacked
        if kept:
            counters["trim_deferred"] += 1
            transport.over_limit[key] = kept
        else:
            transport.over_limit.pop(key, None)
        now = time.monotonic()
        if (kept or unread or unacked) and now - self._warned.get(key, -1e9) >= 60.0:
            self._warned[key] = now
            if kept:
                log.warning(
                    "stream %s is %d entries over max_stream_length=%d: consumer groups have not "
                    "acknowledged them, so trim_policy='safe' keeps them",
                    key,
                    kept,
                    maxlen,
                )
            if unread or unacked:
                log.warning(
                    "trimmed %d entries of %s that a consumer group had not read and %d it had "
                    "not acknowledged (trim_policy='maxlen', max_stream_length=%d); "
                    "%d unread and %d unacknowledged so far",
                    unread,
                    key,
                    unacked,
                    maxlen,
                    counters["trimmed_unread"],
                    counters["trimmed_unacknowledged"],
                )
