"""The writers: tasks that write what concurrent callers hand them, in batches.

:class:`Coalescer` is the common machinery (a queue, a task, a connection of its own,
and a caller's own write when nothing else is under way); :class:`AckWriter` writes
the acknowledgements and releases of every subscription of a transport. The
publisher is built on the same machinery (``_publisher``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis.exceptions import NoScriptError, ResponseError

from dotmac.events import TransportUnavailableError
from dotmac.events.errors import BusStateError

from . import _scripts
from ._common import RELEASED_IDLE_MS, Backoff, retriable, transport_error
from ._connection import Link, Router, Script, redirected

if TYPE_CHECKING:
    from ._subscription import RedisDelivery
    from .transport import RedisTransport

__all__ = ["AckWriter", "Coalescer"]

log = logging.getLogger(__name__)

RELEASE = Script(_scripts.RELEASE)

_T = TypeVar("_T")
# op, key, group, consumer, entry id, delivery count, and the delivery an ack settles
_AckItem = tuple[str, str, str, str, str, int, "RedisDelivery | None"]


class Coalescer(Generic[_T]):
    """A task that writes what concurrent callers submit, in batches.

    ``_enqueue`` returns once the batch holding its item was written (or raises what
    the write raised); ``_write`` settles every future of a batch. ``_write_now``
    lets a caller that finds nothing queued and nothing being written do its write
    in its own task, saving the trip to the writer task and back; callers that come
    meanwhile queue up for the writer task, which batches them while that write is
    still in flight.
    """

    def __init__(self, transport: RedisTransport, task_name: str) -> None:
        self._transport = transport
        self._task_name = task_name
        self._queue: deque[tuple[_T, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._batch: list[tuple[_T, asyncio.Future[None]]] = []  # being written by the task
        self._direct = 0  # writes being done by callers in their own tasks
        self._link = transport._router()  # the task's
        self._direct_link = transport._router()  # for callers writing in their own tasks

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    def _check_open(self) -> asyncio.Task[None]:
        """The writer task, if it runs."""
        task = self._task
        if task is None or task.done():
            raise BusStateError("the redis transport is closed")
        return task

    def put(self, item: _T) -> asyncio.Future[None]:
        """Queue ``item`` for the writer task; the future settles once it is written."""
        future: asyncio.Future[None] = self._check_open().get_loop().create_future()
        queue = self._queue
        if not queue:
            # Otherwise the writer is awake and the idle flag down already.
            self._idle.clear()
            self._wake.set()
        queue.append((item, future))
        return future

    async def _enqueue(self, item: _T) -> None:
        await self.put(item)

    def _quiet(self) -> bool:
        """Nothing queued and nothing being written."""
        return not self._queue and not self._batch and not self._direct

    async def _write_now(self, item: _T) -> None:
        """Write ``item`` in the caller's task (see the class docstring); only when
        :meth:`_quiet`. A cancelled caller leaves nothing behind: what was
        queued meanwhile is the writer task's either way."""
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._direct += 1
        self._idle.clear()
        try:
            await self._write([(item, future)], self._direct_link)
        finally:
            self._direct -= 1
            self._check_idle()
        future.result()

    def _check_idle(self) -> None:
        if self._quiet():
            self._idle.set()

    async def drain(self) -> None:
        await self._idle.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # What was queued, and a batch the cancellation cut short, fail rather than
        # leave their callers waiting.
        for _item, future in (*self._batch, *self._queue):
            if not future.done():
                future.set_exception(TransportUnavailableError("the redis transport was closed"))
        self._batch = []
        self._queue.clear()
        self._check_idle()
        self._link.shut()
        self._direct_link.shut()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._check_idle()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._batch = self._take()
            await self._write(self._batch, self._link)
            self._batch = []

    def _take(self) -> list[tuple[_T, asyncio.Future[None]]]:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def _write(self, batch: list[tuple[_T, asyncio.Future[None]]], link: Router) -> None:
        """Write ``batch`` (single-command writes on ``link``) and settle its futures."""
        raise NotImplementedError


class AckWriter(Coalescer[_AckItem]):
    """Coalesces acks and releases of every subscription into pipelines."""

    def __init__(self, transport: RedisTransport) -> None:
        super().__init__(transport, "dotmac-events-redis-acks")

    async def submit(self, op: str, key: str, group: str, consumer: str, entry_id: str, count: int) -> None:
        await self._enqueue((op, key, group, consumer, entry_id, count, None))

    def ack(self, delivery: RedisDelivery, group: str, consumer: str) -> asyncio.Future[None]:
        """Queue the ack of ``delivery``; the writer settles the delivery once the ack
        was written or failed (or the writer stopped), then the future."""
        return self.put(("ack", delivery.key, group, consumer, delivery.entry_id, 0, delivery))

    async def stop(self) -> None:
        abandoned = [item[6] for item, _future in (*self._batch, *self._queue)]
        await super().stop()
        for delivery in abandoned:
            if delivery is not None:
                delivery._sub._settle(delivery)

    async def _write(self, batch: list[tuple[_AckItem, asyncio.Future[None]]], link: Router) -> None:
        transport = self._transport
        acks: dict[tuple[str, str], list[str]] = {}
        releases: dict[tuple[str, str, str], list[Any]] = {}
        for (op, key, group, consumer, entry_id, count, _delivery), _future in batch:
            if op == "ack":
                acks.setdefault((key, group), []).append(entry_id)
            else:
                releases.setdefault((key, group, consumer), []).extend((entry_id, count))
        deadline = time.monotonic() + transport.config.ack_timeout
        backoff: Backoff | None = None  # made at the first failure
        error: BaseException | None = None
        while True:
            try:
                results = await self._send(acks, releases, link)
            except Exception as exc:
                if retriable(exc) and time.monotonic() < deadline and not transport._closing.is_set():
                    log.debug("ack write failed, retrying: %r", exc)
                    if backoff is None:
                        backoff = Backoff(transport.config.reconnect_backoff_max)
                    await asyncio.sleep(backoff.next())
                    await transport._reroute([key for key, _g in acks] + [key for key, _g, _c in releases])
                    continue
                what = "acknowledgement not written"
                if retriable(exc):
                    what += f" (retried for {transport.config.ack_timeout}s)"
                error = transport_error(what, exc)
                break
            for result in results:
                if isinstance(result, ResponseError) and "NOGROUP" in str(result):
                    log.warning("acknowledged entries of a group that no longer exists: %s", result)
                elif isinstance(result, Exception):
                    error = transport_error("acknowledgement not written", result)
            break
        for item, future in batch:
            delivery = item[6]
            if delivery is not None:
                # Settled here rather than in a callback of each future: one call per
                # entry, no callback scheduled per acknowledged entry.
                delivery._sub._settle(delivery)
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def _send(
        self,
        acks: dict[tuple[str, str], list[str]],
        releases: dict[tuple[str, str, str], list[Any]],
        link: Router,
    ) -> list[Any]:
        """One round trip per node (one with a single server): an ``XACK`` per stream
        and group, a release script call per consumer; the replies, error replies as
        exceptions. A reply saying a slot moved is raised, so the whole batch is
        retried (acks and releases may be written twice; both are idempotent)."""
        commands: list[tuple[Any, ...]] = [("XACK", key, group, *ids) for (key, group), ids in acks.items()]
        keys: list[str] = [key for key, _group in acks]
        for (key, group, consumer), pairs in releases.items():
            commands.append(("EVALSHA", RELEASE.sha, 1, key, group, consumer, RELEASED_IDLE_MS, *pairs))
            keys.append(key)
        per_link: dict[Link, list[int]] = {}
        for index, key in enumerate(keys):
            per_link.setdefault(link.for_key(key), []).append(index)
        results: list[Any] = [None] * len(commands)
        for node_link, indexes in per_link.items():
            replies = await node_link.pipeline([commands[i] for i in indexes])
            for index, reply in zip(indexes, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    # The server's script cache was emptied: EVAL runs it and caches it again.
                    try:
                        reply = await node_link.command("EVAL", RELEASE.source, *commands[index][2:])
                    except ResponseError as exc:
                        reply = exc
                if redirected(reply):
                    node_link.close()
                    raise reply
                results[index] = reply
        return results
