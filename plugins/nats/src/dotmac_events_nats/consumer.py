"""Pull consumers: one JetStream consumer per (subscription, topic), fetched by hand.

Each puller owns one inbox for its whole life and sends its own pull requests
(``$JS.API.CONSUMER.MSG.NEXT``) to it, so every message the server sends to an open
request is received and handed on, whenever the request was made. Client-side fetch
helpers that stop listening while the server still holds their request strand what
the server sends to it, and NATS 2.9 sends a released (NAK'd) message to such a
request: it then waits a whole ``ack_wait`` instead of going straight to a live
member. Nothing here stops listening before the subscription stops.

Flow control: requests ask for at most the subscription's free prefetch slots (its
window minus what it holds, buffers and is still owed), so the transport never
holds more than ``prefetch`` un-acked messages plus a request that outlived its
client-side deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from dotmac.events import Delivery, Message, SubscriptionSpec, TransportError, TransportSubscription
from dotmac.events.transport import DeliverySink

from .groups import describe_group
from .subjects import consumer_name, decode_headers, subject_for

if TYPE_CHECKING:
    from .transport import NatsTransport

__all__ = ["NatsDelivery", "NatsSubscription"]

log = logging.getLogger(__name__)

_ACK = b"+ACK"
_NAK = b"-NAK"
_IN_PROGRESS = b"+WPI"
# Open pull requests per puller: one lingering request plus room to top it up.
_MAX_OPEN_REQUESTS = 4
# Seconds a release is remembered for a consumer that has to be created again.
_RELEASE_MEMORY = 60.0


class NatsDelivery(Delivery):
    __slots__ = ("_puller", "_reply", "_settled", "delivery_count", "message", "ordering_key", "stream_seq")

    def __init__(self, puller: _Puller, msg: Msg) -> None:
        key, headers = decode_headers(msg.headers)
        meta = msg.metadata
        self.stream_seq = meta.sequence.stream
        self.message = Message(
            topic=puller.topic, value=msg.data, key=key, headers=headers, position=str(self.stream_seq)
        )
        self.delivery_count = max(1, meta.num_delivered)
        self.ordering_key: Hashable | None = key
        self._puller = puller
        self._reply = msg.reply
        self._settled = False

    async def ack(self) -> None:
        await self._settle(_ACK)

    async def release(self) -> None:
        await self._settle(_NAK)

    async def _settle(self, verb: bytes) -> None:
        if self._settled:
            return
        self._settled = True
        self._puller.sub.settled(self)
        if verb is _NAK:
            self._puller.released(self.stream_seq)
        # A lost ack or NAK (the connection dropped) leaves the message to ack_wait:
        # redelivered later, never lost. Raising would only make the core log it.
        with contextlib.suppress(Exception):
            await self._puller.nc.publish(self._reply, verb)

    async def touch(self) -> None:
        if not self._settled:
            with contextlib.suppress(Exception):
                await self._puller.nc.publish(self._reply, _IN_PROGRESS)


class _Request:
    __slots__ = ("deadline", "remaining")

    def __init__(self, batch: int, deadline: float) -> None:
        self.remaining = batch
        self.deadline = deadline


class _Puller:
    """One consumer on one topic, fed by pull requests to a private inbox."""

    def __init__(self, sub: NatsSubscription, topic: str) -> None:
        self.sub = sub
        self.transport = sub.transport
        self.nc = sub.transport.connection
        self.topic = topic
        config = self.transport.config
        self.subject = subject_for(config.subject_prefix, topic)
        spec = sub.spec
        self.durable = spec.group is not None
        self.name = (
            consumer_name(spec.group, topic)
            if spec.group is not None
            else consumer_name(f"broadcast-{spec.consumer_name}", topic)
        )
        self.buffer: deque[NatsDelivery] = deque()
        self.requests: deque[_Request] = deque()
        self.wake = asyncio.Event()
        self.last_seq = 0
        self.missing = False
        # Recently released stream sequences: a NAK sent to a consumer that was
        # deleted meanwhile is void, so a recreated consumer starts no later than these.
        self._releases: deque[tuple[float, int]] = deque(maxlen=10_000)
        self._inbox = ""
        self._nsub: Any = None
        self._task: asyncio.Task[None] | None = None

    # -- consumer ---------------------------------------------------------------------
    def _consumer_config(self, start_seq: int | None) -> ConsumerConfig:
        config = self.transport.config
        if start_seq is not None:
            policy, opt = DeliverPolicy.BY_START_SEQUENCE, start_seq
        else:
            policy = DeliverPolicy.ALL if self.sub.spec.start_from == "earliest" else DeliverPolicy.NEW
            opt = None
        return ConsumerConfig(
            name=self.name,
            durable_name=self.name if self.durable else None,
            description=describe_group(self.sub.spec.group, self.topic)
            if self.sub.spec.group is not None
            else None,
            deliver_policy=policy,
            opt_start_seq=opt,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.ack_wait,
            # The server never gives up on a message; the bus dead-letters it.
            max_deliver=-1,
            filter_subject=self.subject,
            max_ack_pending=config.max_ack_pending,
            inactive_threshold=None if self.durable else config.inactive_threshold,
        )

    async def _exists(self) -> bool:
        js = self.transport.jetstream
        try:
            await self.transport.api_call(
                js.consumer_info(self.transport.config.stream, self.name), f"look up consumer {self.name}"
            )
        except TransportError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return False
            raise
        return True

    async def ensure_consumer(self, start_seq: int | None = None) -> None:
        # A group that exists keeps its position, whatever this member's start_from.
        if self.durable and await self._exists():
            return
        js = self.transport.jetstream
        try:
            await self.transport.api_call(
                js.add_consumer(self.transport.config.stream, self._consumer_config(start_seq)),
                f"create consumer {self.name}",
            )
        except TransportError:
            # Another member created the group at the same moment (with another
            # start_from, the server refuses ours): join the one that exists.
            if not (self.durable and await self._exists()):
                raise

    async def open(self) -> None:
        await self.ensure_consumer()
        self._inbox = self.nc.new_inbox()
        self._nsub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"nats-pull-{self.name}")

    # -- receiving --------------------------------------------------------------------
    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers and not msg.data else None
        if status is not None:
            self._on_status(status, str(headers.get("Description", "")) if headers else "")
            return
        if self.requests:
            head = self.requests[0]
            head.remaining -= 1
            if head.remaining <= 0:
                self.requests.popleft()
        else:
            # A request we stopped counting still delivered: count the message itself.
            self.sub.outstanding += 1
        try:
            delivery = NatsDelivery(self, msg)
        except Exception:  # no JetStream metadata: not from our consumer
            self.sub.outstanding -= 1
            log.warning("NATS consumer %s received a message without JetStream metadata", self.name)
            return
        self.last_seq = max(self.last_seq, delivery.stream_seq)
        # Also while stopping: what arrives then is released once our requests ended
        # (releasing it now would hand it back to our own open request).
        self.buffer.append(delivery)
        self.wake.set()

    def _on_status(self, status: str, description: str) -> None:
        if status == "100":  # idle heartbeat
            return
        if status in ("404", "408", "409") and self.requests:
            # The oldest open request ended (expired, or the server turned it down).
            self._drop(self.requests.popleft())
        if status == "503" or (status == "409" and "deleted" in description.lower()):
            # The consumer is gone (deleted, or lost with a memory-stored server).
            self.missing = True
            self._drop_all()
        elif status == "409":
            log.debug("NATS consumer %s: %s %s", self.name, status, description)
        self.wake.set()

    # -- the pull loop ----------------------------------------------------------------
    def _owed(self) -> int:
        return sum(r.remaining for r in self.requests)

    def _drop(self, request: _Request) -> None:
        self.sub.outstanding -= request.remaining
        request.remaining = 0

    def _drop_all(self) -> None:
        while self.requests:
            self._drop(self.requests.popleft())

    def forget_requests(self) -> None:
        self._drop_all()
        self.wake.set()

    def _expire_requests(self, now: float) -> None:
        # A request the server never answered (it restarted, or the connection
        # dropped) stops counting after its deadline; anything it still brings is kept.
        while self.requests and self.requests[0].deadline <= now:
            self._drop(self.requests.popleft())

    async def _request(self, batch: int) -> None:
        expires = self.transport.config.pull_expires
        body = json.dumps({"batch": batch, "expires": int(expires * 1e9)}).encode()
        self.requests.append(_Request(batch, time.monotonic() + expires + 1.0 + expires / 5))
        self.sub.outstanding += batch
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.transport.config.stream}.{self.name}"
        await self.nc.publish(subject, body, reply=self._inbox)

    def released(self, stream_seq: int) -> None:
        self._releases.append((time.monotonic(), stream_seq))

    async def _recreate(self) -> None:
        # From the oldest message this consumer still has un-acked (the bus may release
        # it) or released lately, else from the one after the last it received.
        unsettled = [d.stream_seq for d in self.sub.held if d._puller is self]
        unsettled += [d.stream_seq for d in self.buffer]
        recent = time.monotonic() - _RELEASE_MEMORY
        unsettled += [seq for at, seq in self._releases if at >= recent]
        start = min(unsettled) if unsettled else (self.last_seq + 1 if self.last_seq else None)
        log.warning("NATS consumer %s is gone; creating it again from stream sequence %s", self.name, start)
        await self.ensure_consumer(start_seq=start)
        self.missing = False

    async def _run(self) -> None:
        sub = self.sub
        failures = 0
        while not sub.stopping:
            self.wake.clear()
            try:
                if self.buffer:
                    delivery = self.buffer.popleft()
                    sub.hold(delivery)
                    try:
                        await sub.sink(delivery)
                    except BaseException:
                        # Cancelled while the core had no room yet (or the sink failed):
                        # the core never took the delivery, so it goes back now (a no-op
                        # if the core took it and released it itself).
                        await delivery.release()
                        raise
                    continue
                if self.missing:
                    await self._recreate()
                now = time.monotonic()
                self._expire_requests(now)
                owed = self._owed()
                # Topics of one subscription share its window: none may ask for more
                # than its share, or one busy topic would keep the others waiting.
                share = max(1, sub.spec.prefetch // len(sub.pullers))
                ask = min(sub.room(), share - owed)
                wanted = max(1, min(share, self.transport.config.max_ack_pending) // 4)
                if ask > 0 and len(self.requests) < _MAX_OPEN_REQUESTS and (not owed or ask >= wanted):
                    await self._request(ask)
                    continue
                timeout = self.requests[0].deadline - now if self.requests else None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("NATS consumer %s: %s (retrying)", self.name, exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self.durable:
            # Deleting the consumer ends its pull requests on the server at once.
            with contextlib.suppress(Exception):
                await self.transport.jetstream.delete_consumer(self.transport.config.stream, self.name)
            self._drop_all()
        else:
            await self._await_requests_end()
        if self._nsub is not None:
            with contextlib.suppress(Exception):
                await self._nsub.unsubscribe()
            self._nsub = None
        self._drop_all()
        # Fetched but never handed to the core: straight back to the group.
        while self.buffer:
            await self.buffer.popleft().release()

    async def _await_requests_end(self) -> None:
        # Keep listening until the server has ended every pull request of ours. A
        # request it still holds after we stopped listening would swallow the events
        # the core is about to release (NATS 2.9 hands a NAK'd message to such a
        # request), and they would wait out ack_wait instead of reaching a live member.
        while self.requests:
            remaining = self.requests[-1].deadline - time.monotonic()
            if remaining <= 0:
                return
            self.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), remaining)


class NatsSubscription(TransportSubscription):
    """The pullers of one subscription, its prefetch window and its keep-alive."""

    def __init__(self, transport: NatsTransport, spec: SubscriptionSpec, sink: DeliverySink) -> None:
        self.transport = transport
        self.spec = spec
        self.sink = sink
        self.stopping = False
        # Buffered + held + requested-but-not-received messages, across topics.
        self.outstanding = 0
        self.held: set[NatsDelivery] = set()
        self.pullers = [_Puller(self, topic) for topic in spec.topics]
        self._keepalive: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()

    async def open(self) -> None:
        try:
            for puller in self.pullers:
                await puller.open()
        except BaseException:
            await self._stop_pullers()
            self.transport.forget(self)
            raise
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(), name="nats-keepalive")

    def room(self) -> int:
        return self.spec.prefetch - self.outstanding

    def hold(self, delivery: NatsDelivery) -> None:
        self.held.add(delivery)

    def settled(self, delivery: NatsDelivery) -> None:
        self.held.discard(delivery)
        self.outstanding -= 1
        if self.stopping and not self.held:
            self._drained.set()
        for puller in self.pullers:
            puller.wake.set()

    async def _keep_alive(self) -> None:
        # Tell the server we are still working on what the core holds (retry backoff,
        # a slow handler, drain) and on what waits for room, before ack_wait runs out.
        interval = self.transport.config.ack_wait / 3
        try:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), interval)
                if self._drained.is_set():
                    return
                pending = list(self.held)
                for puller in self.pullers:
                    pending.extend(puller.buffer)
                for delivery in pending:
                    await delivery.touch()
        finally:
            self.transport.forget(self)

    async def _stop_pullers(self) -> None:
        self.stopping = True
        await asyncio.gather(*(puller.stop() for puller in self.pullers))
        if not self.held:
            self._drained.set()

    async def stop(self) -> None:
        if self.stopping:
            return
        await self._stop_pullers()

    async def close(self) -> None:
        """Transport close: stop, and end the keep-alive even if the core holds some."""
        await self.stop()
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
