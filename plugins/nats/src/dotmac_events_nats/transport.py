"""The ``nats://`` transport on NATS JetStream (nats-py).

One stream (``NatsConfig.stream``) stores every topic of the bus on subjects
``<subject_prefix>.<topic>``. A consumer group is a durable pull consumer per topic,
shared by the group's members; a broadcast subscription is an ephemeral pull
consumer of its own, deleted when it stops. Events are acked after the handler (or
the dead letter), released with a NAK for prompt redelivery, and kept alive with
``+WPI`` while the bus holds them. See ``consumer.py`` for the pull loop. Reply
topics travel on core NATS instead (``replies.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from dotmac.events import (
    Capabilities,
    GroupInfo,
    Message,
    MessageTooLargeError,
    PublishError,
    SubscriptionSpec,
    Transport,
    TransportError,
    TransportSubscription,
    TransportUnavailableError,
)
from dotmac.events.errors import BusStateError, ConfigurationError, UnsupportedOperationError
from dotmac.events.transport import DeliverySink

from .config import NatsConfig
from .consumer import NatsSubscription
from .groups import list_groups, list_topics
from .replies import ReplySubscription, is_reply_topic, reply_subject
from .subjects import decode_headers, encode_headers, parse_header_block, subject_for

__all__ = ["CAPABILITIES", "NatsTransport"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CAPABILITIES = Capabilities(
    persistent=True,
    consumer_groups=True,
    partitions=False,
    ordering="topic",
    request_reply=True,
    replay_backlog=True,
    readable=True,
    restartable=True,
    batch_publish=False,
    introspection=True,
)

# JetStream API error codes (err_code) this module tells apart.
_STREAM_NAME_IN_USE = 10058
_NO_MESSAGE_FOUND = 10037


class NatsTransport(Transport):
    name = "nats"
    capabilities = CAPABILITIES

    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self.default_max_deliveries = config.max_deliver
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subs: set[NatsSubscription | ReplySubscription] = set()
        self._lock = asyncio.Lock()
        self._closed = False
        self._start_errors: list[Exception] = []

    def __repr__(self) -> str:
        return f"NatsTransport(servers={self.config.servers!r}, stream={self.config.stream!r})"

    @property
    def connection(self) -> Client:
        if self._nc is None or self._closed:
            raise BusStateError("the NATS transport is not started")
        return self._nc

    @property
    def jetstream(self) -> JetStreamContext:
        if self._js is None or self._closed:
            raise BusStateError("the NATS transport is not started")
        return self._js

    def describe(self) -> Mapping[str, object]:
        return {
            "transport": self.name,
            "servers": self.config.servers,
            "stream": self.config.stream,
            "subject_prefix": self.config.subject_prefix,
            "storage": self.config.storage,
            "auth": self._auth_kind(),
            "tls": self.config.tls,
        }

    def _auth_kind(self) -> str:
        if self.config.creds_file:
            return "creds"
        if self.config.user:
            return "user"
        if self.config.resolved_token():
            return "token"
        return "none"

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        async with self._lock:
            if self._nc is not None:
                return
            if self._closed:
                raise BusStateError("the NATS transport was closed")
            nc = await self._connect()
            try:
                js = nc.jetstream(timeout=self.config.request_timeout)
                self._nc, self._js = nc, js
                if self.config.create_stream:
                    await self._ensure_stream(js)
                else:
                    await self.api_call(js.stream_info(self.config.stream), "look up the stream")
            except BaseException:
                self._nc = self._js = None
                await nc.close()
                raise

    async def _connect(self) -> Client:
        config = self.config
        options: dict[str, Any] = {
            "servers": config.server_list,
            "name": config.name,
            "connect_timeout": config.connect_timeout,
            "reconnect_time_wait": config.reconnect_wait,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if config.user is not None:
            options["user"] = config.user
            options["password"] = config.resolved_password()
        token = config.resolved_token()
        if token is not None:
            options["token"] = token
        if config.creds_file is not None:
            options["user_credentials"] = config.creds_file
        options["ping_interval"] = config.ping_interval
        if config.tls:
            try:
                options["tls"] = config.ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"NATS TLS files could not be loaded: {type(exc).__name__}"
                ) from None
            if config.tls_hostname is not None:
                options["tls_hostname"] = config.tls_hostname
        hosts = config.servers
        nc = Client()
        # The client retries forever once connected; the first connection gets a
        # deadline of its own, so an unreachable server fails start() instead.
        budget = config.connect_timeout * (len(config.server_list) + 1) + config.reconnect_wait
        self._start_errors = []
        try:
            await asyncio.wait_for(nc.connect(**options), budget)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            await nc.close()
            # The client retries a refused login like a lost connection; what the
            # server said is in the errors it reported on the way.
            said = " ".join(str(e).lower() for e in [*self._start_errors, exc])
            if "certificate" in said or "ssl" in said:
                raise TransportError(
                    f"TLS with NATS at {hosts} failed: {type(exc).__name__}", retriable=False
                ) from None
            if "authorization" in said or "authentication" in said:
                raise TransportError(f"NATS at {hosts} refused the credentials", retriable=False) from None
            raise TransportUnavailableError(
                f"cannot connect to NATS at {hosts}: {type(exc).__name__}"
            ) from None
        finally:
            self._start_errors = []
        return nc

    async def _on_error(self, exc: Exception) -> None:
        # While starting, start() reports the failure itself.
        if self._nc is None:
            self._start_errors.append(exc)
        level = logging.DEBUG if self._nc is None else logging.WARNING
        log.log(level, "NATS connection error: %s", type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS")
        # Pull requests do not survive a server restart; let every puller ask again
        # (what an old request still brings is kept all the same).
        for sub in list(self._subs):
            for puller in getattr(sub, "pullers", ()):
                puller.forget_requests()

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        config = self.config
        wanted = StreamConfig(
            name=config.stream,
            subjects=[f"{config.subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE if config.storage == "file" else StorageType.MEMORY,
            num_replicas=config.replicas,
            max_age=config.max_age or None,
            max_msgs=config.max_msgs,
            max_bytes=config.max_bytes,
        )
        try:
            await self.api_call(js.add_stream(wanted), "create the stream")
        except TransportError as exc:
            if getattr(exc.__cause__, "err_code", None) != _STREAM_NAME_IN_USE:
                raise
            # The stream exists with other settings (another bus made it, or an
            # operator tuned it): use it as it is, if it carries our subjects.
            info = await self.api_call(js.stream_info(config.stream), "look up the stream")
            if f"{config.subject_prefix}.>" not in (info.config.subjects or []):
                raise ConfigurationError(
                    f"NATS stream {config.stream!r} exists but does not cover "
                    f"'{config.subject_prefix}.>' (it has {info.config.subjects})"
                ) from None
            log.info("using the existing NATS stream %s as configured on the server", config.stream)

    async def api_call(self, call: Awaitable[T], what: str) -> T:
        """Await a JetStream API call; failures become transport errors naming ``what``."""
        try:
            return await call
        except nats.js.errors.ServiceUnavailableError as exc:
            raise TransportUnavailableError(f"NATS could not {what}: JetStream is unavailable") from exc
        except nats.js.errors.APIError as exc:
            raise TransportError(f"NATS could not {what}: {exc.description}", retriable=False) from exc
        except nats.errors.NoRespondersError as exc:
            raise TransportUnavailableError(f"NATS could not {what}: JetStream is not enabled") from exc
        except (nats.errors.TimeoutError, asyncio.TimeoutError) as exc:
            raise TransportUnavailableError(f"NATS could not {what}: no answer in time") from exc
        except nats.errors.Error as exc:
            raise TransportUnavailableError(f"NATS could not {what}: {type(exc).__name__}") from exc

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            nc = self._nc
            results = await asyncio.gather(*(sub.close() for sub in list(self._subs)), return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.warning("closing a NATS subscription failed: %r", result)
            self._subs.clear()
            if nc is not None:
                try:
                    # Acks and NAKs are fire-and-forget: flush them before closing.
                    await nc.flush(timeout=max(1, int(self.config.request_timeout)))
                except Exception as exc:
                    log.debug("flush before close failed: %r", exc)
                try:
                    # With the server gone, nats-py's close fails writing what it buffered
                    # (acks, which JetStream then redelivers) after it has stopped its
                    # reconnect loop; the connection is closed either way.
                    await asyncio.wait_for(nc.close(), self.config.connect_timeout)
                except (OSError, asyncio.TimeoutError) as exc:
                    log.debug("closing the NATS connection failed: %r", exc)
            self._nc = self._js = None

    def forget(self, sub: NatsSubscription | ReplySubscription) -> None:
        self._subs.discard(sub)

    # -- publishing ----------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        js = self.jetstream
        prefix = self.config.subject_prefix
        # Everything is checked before the first message leaves.
        prepared = [
            (subject_for(prefix, m.topic), m.value, encode_headers(m.headers, m.key)) for m in messages
        ]
        if not prepared:
            return
        limit = self.connection.max_payload
        for subject, value, headers in prepared:
            size = len(value) + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items()) + 12
            if size > limit:
                raise MessageTooLargeError(
                    f"the message for {subject!r} ({size} bytes with headers) exceeds the server's "
                    f"max_payload of {limit} bytes"
                )
        if any(is_reply_topic(m.topic) for m in messages):
            await self._publish_replies(messages, prepared)
            prepared = [p for m, p in zip(messages, prepared, strict=True) if not is_reply_topic(m.topic)]
            if not prepared:
                return
        # Each message goes out at once and its acknowledgement comes back on one shared
        # reply subscription: no round trip per message, and no timer per message either.
        # The client bounds the acknowledgements outstanding (4000 by default), so under
        # load a publish waits to be sent and request_timeout counts from the send.
        futures: list[asyncio.Future[Any]] = []
        try:
            for subject, value, headers in prepared:
                futures.append(
                    await js.publish_async(subject, value, stream=self.config.stream, headers=headers)
                )
        except Exception as exc:
            for future in futures:
                future.cancel()
            raise self._publish_error(prepared[len(futures)][0], len(prepared[len(futures)][1]), exc) from exc
        _done, pending = await asyncio.wait(futures, timeout=self.config.request_timeout)
        for future in pending:
            future.cancel()
        for (subject, value, _headers), future in zip(prepared, futures, strict=True):
            if future in pending:
                raise PublishError(
                    f"NATS did not confirm the message for {subject!r} within {self.config.request_timeout}s",
                    retriable=True,
                )
            failure = future.exception()
            if failure is not None:
                raise self._publish_error(subject, len(value), failure) from failure

    async def _publish_replies(
        self, messages: Sequence[Message], prepared: list[tuple[str, bytes, dict[str, str]]]
    ) -> None:
        # Core NATS: the flush returns once the server has read everything sent before it.
        nc = self.connection
        prefix = self.config.subject_prefix
        for message, (_subject, value, headers) in zip(messages, prepared, strict=True):
            if is_reply_topic(message.topic):
                await nc.publish(reply_subject(prefix, message.topic), value, headers=headers)
        try:
            await nc.flush(timeout=max(1, round(self.config.request_timeout)))
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise PublishError(f"NATS did not take a reply ({type(exc).__name__})", retriable=True) from exc

    def _publish_error(self, subject: str, size: int, exc: BaseException) -> Exception:
        if isinstance(exc, nats.errors.MaxPayloadError):
            return MessageTooLargeError(
                f"the message for {subject!r} ({size} bytes) exceeds the server's max_payload"
            )
        if isinstance(exc, nats.js.errors.APIError):
            return PublishError(f"NATS refused the message for {subject!r}: {exc.description}")
        if isinstance(exc, (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)):
            return PublishError(
                f"no JetStream stream answered for {subject!r} (is it being restarted?)", retriable=True
            )
        if isinstance(exc, nats.errors.Error):
            return TransportUnavailableError(f"NATS publish to {subject!r} failed: {type(exc).__name__}")
        return PublishError(f"NATS publish to {subject!r} failed: {type(exc).__name__}", retriable=True)

    # -- consuming -----------------------------------------------------------------------
    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        self.connection  # noqa: B018 - raises when not started
        for topic in spec.topics:
            subject_for(self.config.subject_prefix, topic)
        replies = [is_reply_topic(topic) for topic in spec.topics]
        sub: NatsSubscription | ReplySubscription
        if all(replies):
            sub = ReplySubscription(self, spec, sink)
        elif any(replies):
            raise UnsupportedOperationError(
                "a NATS subscription takes reply topics or stored topics, not both at once"
            )
        else:
            sub = NatsSubscription(self, spec, sink)
        await sub.open()
        self._subs.add(sub)
        return sub

    async def read(self, topic: str, *, limit: int = 100) -> list[Message]:
        """The oldest ``limit`` messages of ``topic`` still in the stream."""
        nc = self.connection
        subject = subject_for(self.config.subject_prefix, topic)
        api = f"$JS.API.STREAM.MSG.GET.{self.config.stream}"
        out: list[Message] = []
        seq = 1
        while len(out) < limit:
            request = json.dumps({"seq": seq, "next_by_subj": subject}).encode()
            try:
                reply = await nc.request(api, request, timeout=self.config.request_timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError) as exc:
                raise TransportUnavailableError(f"NATS did not answer a read of {topic!r}") from exc
            body = json.loads(reply.data)
            error = body.get("error")
            if error is not None:
                if error.get("err_code") == _NO_MESSAGE_FOUND or error.get("code") == 404:
                    break
                raise TransportError(f"NATS could not read {topic!r}: {error.get('description')}")
            stored = body["message"]
            raw = parse_header_block(base64.b64decode(stored["hdrs"])) if stored.get("hdrs") else None
            key, headers = decode_headers(raw)
            value = base64.b64decode(stored["data"]) if stored.get("data") else b""
            out.append(
                Message(topic=topic, value=value, key=key, headers=headers, position=str(stored["seq"]))
            )
            seq = int(stored["seq"]) + 1
        return out

    async def groups(self, topic: str) -> list[GroupInfo]:
        """The durable consumers of ``topic``'s subject (see ``groups.py``)."""
        return await list_groups(self, topic)

    async def topics(self) -> list[str]:
        """The topics of the stream's subjects under the subject prefix, and of its groups."""
        return await list_topics(self)
