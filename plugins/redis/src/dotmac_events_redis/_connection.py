"""The connections the transport opens itself: RESP2 over an asyncio stream, replies
parsed by ``hiredis.Reader`` and commands packed by ``hiredis.pack_command``.

Publishes, acknowledgements and blocking reads run on these; redis-py's client and
pool carry the rest (group administration, recovery, reads of a topic). Owning this
small layer keeps the hot paths cheap (no per-command pool checkout, packing in C, a
write timeout armed only when the socket did not take a command whole) while using
nothing of redis-py but its public client and exception classes.

Error replies become the exception classes redis-py raises for them, so the rest of
the transport tells failures apart in one way whichever path a command took.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    DataError,
    ExecAbortError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import RedisConfig

__all__ = ["Endpoint", "Link", "Reader", "RespConnection", "Router", "Script", "redirected", "reply_error"]

# Error codes (the first word of an error reply) with a class of their own.
_ERROR_CLASSES: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
    "NOPERM": NoPermissionError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
    "OOM": OutOfMemoryError,
    "EXECABORT": ExecAbortError,
}
# Generic ERR replies that mean refused credentials or a full server.
_ERR_CLASSES: tuple[tuple[str, type[RedisError]], ...] = (
    ("invalid password", AuthenticationError),
    ("invalid username-password pair", AuthenticationError),
    ("without any password configured", AuthenticationError),
    ("max number of clients reached", RedisConnectionError),
)
_READ_SIZE = 65536


def reply_error(message: str) -> RedisError:
    """The exception for an error reply (the whole message is kept: it names the code)."""
    code = message.split(" ", 1)[0]
    cls = _ERROR_CLASSES.get(code)
    if cls is None and code == "ERR":
        cls = next((c for phrase, c in _ERR_CLASSES if phrase in message), None)
    return (cls or ResponseError)(message)


def redirected(exc: BaseException) -> bool:
    """A Redis Cluster reply saying the key's slot is served by another node."""
    return isinstance(exc, ResponseError) and str(exc).startswith(("MOVED ", "ASK "))


def _ssl_context(config: RedisConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ssl_ca_certs)
    # check_hostname must be off before verification can be (ssl_insecure only).
    context.check_hostname = config.ssl_check_hostname and config.ssl_cert_reqs != "none"
    context.verify_mode = {
        "required": ssl.CERT_REQUIRED,
        "optional": ssl.CERT_OPTIONAL,
        "none": ssl.CERT_NONE,
    }[config.ssl_cert_reqs]
    if config.ssl_certfile is not None:
        context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, password=config.ssl_password)
    return context


class Endpoint:
    """Where and how to connect: address, TLS context, AUTH, database, client name.

    The address is the configured one, or a node of a Redis Cluster (``host``, ``port``).
    """

    def __init__(self, config: RedisConfig, host: str | None = None, port: int | None = None) -> None:
        self.config = config
        self.host = config.host if host is None else host
        self.port = config.port if port is None else port
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        c = self.config
        return f"<Endpoint {'rediss' if c.ssl else 'redis'}://{self.host}:{self.port}/{c.db}>"

    def at(self, host: str, port: int) -> Endpoint:
        """The same settings for another address (a cluster node); shares the TLS context."""
        other = Endpoint(self.config, host, port)
        other._ssl = self._ssl
        return other

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.ssl:
            return None
        if self._ssl is None:
            try:
                self._ssl = _ssl_context(self.config)
            except (OSError, ValueError) as exc:
                # Certificate or key files that cannot be used: a setup error, not a
                # lost server, so nothing retries it (ssl's messages hold no password).
                raise RedisError(f"cannot set up TLS: {type(exc).__name__}: {exc}") from exc
        return self._ssl

    def handshake(self) -> list[tuple[Any, ...]]:
        """Commands a new connection sends before any other."""
        c = self.config
        commands: list[tuple[Any, ...]] = []
        if c.username:
            commands.append(("AUTH", c.username, c.password or ""))
        elif c.password:
            commands.append(("AUTH", c.password))
        if c.client_name:
            commands.append(("CLIENT", "SETNAME", c.client_name))
        if c.db:
            commands.append(("SELECT", c.db))
        return commands


def _pack(args: Sequence[Any]) -> bytes:
    """``args`` as one RESP command; ``str`` as UTF-8, lone surrogates (text read
    from bytes that were not UTF-8) as the bytes they stand for."""
    try:
        try:
            return hiredis.pack_command(tuple(args))  # type: ignore[no-any-return]
        except UnicodeEncodeError:
            encoded: tuple[Any, ...] = tuple(
                a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a for a in args
            )
            return hiredis.pack_command(encoded)  # type: ignore[no-any-return]
    except TypeError:
        # The values are not repeated: they may be event contents.
        kinds = sorted({type(a).__name__ for a in args if type(a) not in (str, bytes, int, float)})
        raise DataError(f"cannot send {', '.join(kinds)} to Redis") from None


class RespConnection:
    """One socket to Redis: write packed commands, read their replies in order.

    ``timeout`` bounds each wait for the socket (a reply, a write the socket did not
    take at once); when it runs out the connection is dropped, as is its state.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self._stream_in = reader
        self._stream_out = writer
        self._timeout = timeout
        self._replies = hiredis.Reader(protocolError=InvalidResponse, replyError=reply_error)
        self._expired = False

    @classmethod
    async def open(cls, endpoint: Endpoint, *, timeout: float) -> RespConnection:
        config = endpoint.config
        context = endpoint.ssl_context()
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    endpoint.host,
                    endpoint.port,
                    ssl=context,
                    server_hostname=endpoint.host if context is not None else None,
                    limit=_READ_SIZE,
                ),
                config.socket_connect_timeout,
            )
        except asyncio.TimeoutError:
            raise RedisTimeoutError(f"timeout connecting to {where}") from None
        except OSError as exc:
            raise RedisConnectionError(f"error connecting to {where}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn = cls(reader, writer, timeout)
        try:
            handshake = endpoint.handshake()
            if handshake:
                for reply in await conn.pipeline(handshake):
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def connected(self) -> bool:
        return not self._stream_out.transport.is_closing()

    def close(self) -> None:
        # abort(): a connection given up on has nothing left worth flushing.
        self._stream_out.transport.abort()

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply; an error reply is raised."""
        await self._send(_pack(args))
        reply = await self._next()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write; their replies, error replies as exceptions."""
        await self._send(b"".join([_pack(args) for args in commands]))
        return [await self._next() for _ in commands]

    async def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``commands`` in a ``MULTI`` block; their replies as :meth:`pipeline`."""
        replies = await self.pipeline([("MULTI",), *commands, ("EXEC",)])
        queued, executed = replies[1:-1], replies[-1]
        if isinstance(executed, RedisError):
            # Refused before anything ran (EXECABORT): each command fails with the
            # reason it was refused, or with the abort.
            return [q if isinstance(q, RedisError) else executed for q in queued]
        return list(executed)

    async def _send(self, data: bytes) -> None:
        writer = self._stream_out
        try:
            # One write() rather than writelines(): on some Python releases (3.13.0)
            # writelines() does not pause the protocol, so drain() would not wait for a
            # stuck peer and the timeout below would never fire.
            writer.write(data)
            transport = writer.transport
            if transport.get_write_buffer_size() or transport.is_closing():
                await asyncio.wait_for(writer.drain(), self._timeout)
        except asyncio.TimeoutError:
            self.close()
            raise RedisTimeoutError("timeout writing to socket") from None
        except OSError as exc:
            self.close()
            raise RedisConnectionError(f"error while writing to socket: {exc}") from exc
        except BaseException:
            # A write cut short leaves the protocol state unknown.
            self.close()
            raise

    async def _next(self) -> Any:
        parser = self._replies
        reply = parser.gets()
        while reply is False:
            await self._fill()
            reply = parser.gets()
        return reply

    async def _fill(self) -> None:
        # A timer rather than asyncio.wait_for: no task per read on Python 3.11, and it
        # does not depend on the task the read runs in.
        timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        try:
            data = await self._stream_in.read(_READ_SIZE)
        except OSError as exc:
            self.close()
            if self._expired:
                raise RedisTimeoutError("timeout reading from socket") from None
            raise RedisConnectionError(f"error while reading from socket: {exc}") from exc
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
        if not data:
            self.close()
            if self._expired:
                raise RedisTimeoutError("timeout reading from socket")
            raise RedisConnectionError("connection closed by server")
        self._replies.feed(data)

    def _expire(self) -> None:
        self._expired = True
        self.close()


class Script:
    """A Lua script run by its SHA1 digest, sent whole when the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class Link:
    """A connection of its own, outside the pool, for one command at a time.

    The writers' hot paths (a publish, a batch of acks) use links because checking a
    connection out of a pool and back costs more client time than the command
    itself; blocking reads must not hold a pool connection at all. After a failure
    or a cancellation the connection is dropped and the next command opens a new
    one; an error reply leaves it in use.
    """

    blocking = False

    def __init__(self, endpoint: Endpoint, resolve: Callable[[], Endpoint] | None = None) -> None:
        # ``resolve`` (cluster mode) picks the node at each (re)connect.
        self._endpoint = endpoint
        self._resolve = resolve
        self._conn: RespConnection | None = None
        self._shut = False
        self.client_id: int | None = None

    async def _connection(self) -> RespConnection:
        if self._shut:
            raise RedisConnectionError("the connection was closed with the transport")
        conn = self._conn
        if conn is not None and conn.connected:
            return conn
        self.close()
        if self._resolve is not None:
            self._endpoint = self._resolve()
        config = self._endpoint.config
        timeout = config.socket_timeout
        if self.blocking:
            # A blocking read must outlive its BLOCK time; a dead server still times out.
            timeout += config.block_timeout
        conn = await RespConnection.open(self._endpoint, timeout=timeout)
        self._conn = conn
        try:
            await self._on_connect(conn)
        except BaseException:
            self.close()
            raise
        return conn

    async def command(self, *args: Any) -> Any:
        conn = await self._connection()
        try:
            return await conn.call(*args)
        except ResponseError as exc:
            if redirected(exc):
                # The slot lives elsewhere now: the next command picks the node again.
                self.close()
            raise
        except BaseException:
            # After a failure or a cancellation the connection state is unknown.
            self.close()
            raise

    async def pipeline(self, commands: Sequence[Sequence[Any]], *, transaction: bool = False) -> list[Any]:
        """Several commands in one round trip; error replies come back as exceptions."""
        conn = await self._connection()
        try:
            if transaction:
                return await conn.transaction(commands)
            return await conn.pipeline(commands)
        except BaseException:
            self.close()
            raise

    async def eval(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # The server's script cache was emptied (restart, SCRIPT FLUSH); EVAL
            # runs the script and caches it again.
            return await self.command("EVAL", script.source, len(keys), *keys, *args)

    async def _on_connect(self, conn: RespConnection) -> None:
        """Hook: set up a new connection."""

    @property
    def endpoint(self) -> Endpoint:
        """Where the link connects (a cluster link: where it connected last)."""
        return self._endpoint

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self.client_id = None
        if conn is not None:
            conn.close()

    def shut(self) -> None:
        """Close for good: later commands fail instead of connecting again."""
        self._shut = True
        self.close()


class Reader(Link):
    """A link for blocking reads that knows its server-side client id (``stop()``
    unblocks a read with it) and whose socket timeout outlasts the BLOCK time."""

    blocking = True

    async def _on_connect(self, conn: RespConnection) -> None:
        try:
            self.client_id = int(await conn.call("CLIENT", "ID"))
        except ResponseError:
            # Without CLIENT ID (ACL) stop() falls back to cancelling the read.
            self.client_id = None


class Router:
    """The links of one writer: a single link, or with Redis Cluster one per node,
    picked by the key a command touches (``node_of`` says which node serves it)."""

    def __init__(self, endpoint: Endpoint, node_of: Callable[[str], Endpoint] | None = None) -> None:
        self._endpoint = endpoint
        self._node_of = node_of
        self._single = Link(endpoint)
        self._links: dict[tuple[str, int], Link] = {}
        self._shut = False

    @property
    def cluster(self) -> bool:
        return self._node_of is not None

    def for_key(self, key: str) -> Link:
        if self._node_of is None:
            return self._single
        node = self._node_of(key)
        link = self._links.get((node.host, node.port))
        if link is None:
            link = Link(node)
            if self._shut:
                link.shut()
            self._links[(node.host, node.port)] = link
        return link

    def close(self) -> None:
        self._single.close()
        for link in self._links.values():
            link.close()

    def shut(self) -> None:
        self._shut = True
        self._single.shut()
        for link in self._links.values():
            link.shut()
