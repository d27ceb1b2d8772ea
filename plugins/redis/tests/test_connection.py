"""The transport's own connections (packing, replies, bounded socket waits), entry
parsing, and that the plugin leans on nothing private of redis-py or hiredis."""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    DataError,
    ExecAbortError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import dotmac_events_redis
from dotmac.events import Message
from dotmac.events.wire import WireHeaders
from dotmac_events_redis import RedisConfig
from dotmac_events_redis._common import entry_fields, entry_message
from dotmac_events_redis._connection import Endpoint, Link, RespConnection, _pack, reply_error

from .conftest import config_for

SOURCE = Path(dotmac_events_redis.__file__).parent


# -- packing and replies -----------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ("XADD", "stream", "*", "ce_id", "é" * 3, "@data", b"\x00\xff" * 100),
        ("EVALSHA", "a" * 40, 1, "key", 0, 2, "n", 1.5, 10**20, -3),
        ("SET", "k", b"x" * 100_000),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    theirs = b"".join(bytes(chunk) for chunk in Connection().pack_command(*args))
    assert _pack(args) == theirs


_ARGS = st.lists(
    st.text(max_size=6)
    | st.sampled_from(["\udcff", "a\udc80b", "é"])
    | st.binary(max_size=6)
    | st.integers(-(10**20), 10**20),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(args=_ARGS)
def test_text_is_packed_as_its_surrogateescape_bytes(args: list[Any]) -> None:
    # Text goes to hiredis as str (encoded in C); it must come out as the bytes the
    # general path writes, lone surrogates included.
    encoded = tuple(a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a for a in args)
    assert _pack(args) == hiredis.pack_command(encoded)


@pytest.mark.parametrize("value", [True, None, object(), bytearray(b"secret")])
def test_values_redis_cannot_take_are_refused_without_showing_them(value: object) -> None:
    with pytest.raises(DataError) as caught:
        _pack(("SET", "secret-key", value))
    assert type(value).__name__ in str(caught.value) and "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("NOSCRIPT No matching script. Please use EVAL.", NoScriptError),
        ("WRONGPASS invalid username-password pair or user is disabled.", AuthenticationError),
        ("NOAUTH Authentication required.", AuthenticationError),
        ("ERR invalid password", AuthenticationError),
        (
            "ERR AUTH <password> called without any password configured for the default user.",
            AuthenticationError,
        ),
        ("NOPERM User u has no permissions to run the 'xadd' command", NoPermissionError),
        ("READONLY You can't write against a read only replica.", ReadOnlyError),
        ("LOADING Redis is loading the dataset in memory", BusyLoadingError),
        ("OOM command not allowed when used memory > 'maxmemory'.", OutOfMemoryError),
        ("EXECABORT Transaction discarded because of previous errors.", ExecAbortError),
        ("ERR max number of clients reached", RedisConnectionError),
        ("NOGROUP No such key 'k' or consumer group 'g'", ResponseError),
        ("ERR unknown command 'FOO'", ResponseError),
    ],
)
def test_error_replies_become_redis_py_exception_classes(message: str, cls: type[Exception]) -> None:
    error = reply_error(message)
    assert type(error) is cls
    assert str(error) == message
    parser = hiredis.Reader(replyError=reply_error)
    parser.feed(f"-{message}\r\n".encode())
    assert type(parser.gets()) is cls


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[Link]:
    link = Link(Endpoint(config_for(redis_url)))
    yield link
    link.shut()


async def test_a_link_runs_commands_pipelines_and_transactions(link: Link, raw: aioredis.Redis) -> None:
    key = f"conn-test-{id(link)}"
    try:
        assert await link.command("SET", key, b"\x00v") == b"OK"
        assert await link.command("GET", key) == b"\x00v"
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await link.command("XLEN", key)
        # An error reply leaves the connection in use, in order.
        replies = await link.pipeline([("GET", key), ("XLEN", key), ("STRLEN", key)])
        assert replies[0] == b"\x00v" and isinstance(replies[1], ResponseError) and replies[2] == 2
        # A command refused at queue time fails; so does the rest, which never ran.
        refused = await link.pipeline([("SET", key, "x"), ("NOSUCHCOMMAND",)], transaction=True)
        assert isinstance(refused[0], ExecAbortError) and isinstance(refused[1], ResponseError)
        assert await raw.get(key) == "\x00v"
        # A command that fails while running fails alone.
        ran = await link.pipeline([("XLEN", key), ("SET", key, "y")], transaction=True)
        assert isinstance(ran[0], ResponseError) and ran[1] == b"OK"
        assert await raw.get(key) == "y"
    finally:
        await raw.delete(key)


async def test_a_link_reconnects_after_its_connection_is_killed(link: Link, raw: aioredis.Redis) -> None:
    client_id = await link.command("CLIENT", "ID")
    assert await raw.client_kill_filter(_id=client_id) == 1
    with pytest.raises(RedisConnectionError):
        await link.command("PING")
    assert await link.command("PING") == b"PONG"
    assert await link.command("CLIENT", "ID") != client_id


# -- bounded waits -----------------------------------------------------------------------
@pytest.fixture
async def silent_server() -> AsyncIterator[Callable[[], int]]:
    """A server that accepts connections and never reads or answers."""
    peers: list[asyncio.StreamWriter] = []

    async def never_read(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    yield lambda: int(server.sockets[0].getsockname()[1])
    for writer in peers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_write_the_server_does_not_take_times_out_and_disconnects(
    silent_server: Callable[[], int],
) -> None:
    endpoint = Endpoint(RedisConfig(host="127.0.0.1", port=silent_server(), socket_timeout=0.2))
    conn = await RespConnection.open(endpoint, timeout=0.2)
    try:
        # Far more than the socket buffers hold, so the write has to wait for a reader.
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(conn.call("SET", "k", b"x" * 64_000_000), 5)
        assert not conn.connected
    finally:
        conn.close()


async def test_a_reply_that_never_comes_times_out_and_disconnects(silent_server: Callable[[], int]) -> None:
    endpoint = Endpoint(RedisConfig(host="127.0.0.1", port=silent_server()))
    conn = await RespConnection.open(endpoint, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(conn.call("PING"), 5)
        assert 0.15 < loop.time() - started < 2
        assert not conn.connected
    finally:
        conn.close()


# -- parsing stream entries ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "headers"),
    [
        ([b"h", b"v", b"@key", b"k", b"@data", b"{}"], {"h": "v"}),
        ({b"h": b"v", b"@key": b"k", b"@data": b"{}"}, {"h": "v"}),
        # Not UTF-8: the byte survives as a lone surrogate, which the core's decode
        # refuses (the entry is dead-lettered) instead of changing it silently.
        ([b"h", b"\xff", b"@key", b"k", b"@data", b"{}"], {"h": "\udcff"}),
        (["h", "v", b"@key", b"k", b"@data", b"{}"], {"h": "v"}),
    ],
)
def test_entries_become_messages(fields: Any, headers: dict[str, str]) -> None:
    message = entry_message("orders", b"1-2", fields)
    assert message.topic == "orders"
    assert message.position == "1-2"
    assert message.key == "k"
    assert message.value == b"{}"
    assert message.headers == headers


def test_an_entry_without_key_or_data_is_an_empty_message() -> None:
    message = entry_message("orders", b"1-2", [b"h", b"v"])
    assert (message.key, message.value, message.headers) == (None, b"", {"h": "v"})


@pytest.mark.parametrize(
    ("fields", "headers", "conflicts"),
    [
        # A name twice with one value is kept once; with two values it is ambiguous.
        ([b"h", b"v", b"h", b"v", b"@data", b"{}"], {"h": "v"}, ()),
        ([b"h", b"v", b"h", b"w", b"@data", b"{}"], {"h": "v"}, ("h",)),
        # A NUL byte inside a value is kept.
        ([b"h", b"a\x00b", b"@key", b"k\x00", b"@data", b"{}"], {"h": "a\x00b"}, ()),
    ],
)
def test_repeated_names_and_nul_bytes_are_kept_apart(
    fields: list[bytes], headers: dict[str, str], conflicts: tuple[str, ...]
) -> None:
    message = entry_message("orders", b"1-2", fields)
    assert message.headers == headers
    assert getattr(message.headers, "conflicts", ()) == conflicts
    assert message.value == b"{}"


_FIELD = st.one_of(
    st.sampled_from([b"@data", b"@key", b"h", b"ce_id", b"", b"\x00", b"\xff", "h"]),
    st.binary(max_size=6),
)


@settings(max_examples=100, deadline=None)
@given(fields=st.lists(_FIELD, max_size=12).filter(lambda f: len(f) % 2 == 0))
def test_every_layout_of_fields_reads_as_the_field_by_field_parse(fields: list[Any]) -> None:
    # Entries written by other clients may hold any fields in any order: the result
    # must be the one of a field-by-field reading (the str entry id takes that path).
    fast = entry_message("t", b"1700000000000-1", list(fields))
    general = entry_message("t", "1700000000000-1", list(fields))
    assert fast == general
    assert getattr(fast.headers, "conflicts", ()) == getattr(general.headers, "conflicts", ())


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8) | st.sampled_from(
    ["\udcff", "a\x00"]
)


@settings(max_examples=100, deadline=None)
@given(
    headers=st.dictionaries(_TEXT.filter(lambda n: n not in ("@key", "@data")), _TEXT, max_size=6),
    key=st.none() | _TEXT,
    value=st.binary(max_size=20),
)
def test_entries_read_back_as_they_were_written(
    headers: dict[str, str], key: str | None, value: bytes
) -> None:
    written = Message(topic="t", value=value, key=key, headers=headers)
    # Through the packer and hiredis's parser, as they travel: str in, bytes back.
    parser = hiredis.Reader()
    parser.feed(_pack(entry_fields(written)))
    fields = parser.gets()
    assert all(type(f) is bytes for f in fields)
    read = entry_message("t", b"1700000000000-1", fields)
    assert (read.value, read.key, read.headers) == (value, key, headers)
    assert not isinstance(read.headers, WireHeaders)
    assert read.position == "1700000000000-1"
    assert read.timestamp is not None and read.timestamp.year == 2023


# -- nothing private of redis-py or hiredis --------------------------------------------------
def _modules() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text(), str(path)) for path in sorted(SOURCE.glob("*.py"))}


def _own_private_names(trees: dict[str, ast.Module]) -> set[str]:
    """Private names the plugin defines itself (attributes, methods, module names)."""
    names = {path.stem for path in SOURCE.glob("_*.py")}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries
            elif isinstance(node, ast.alias) and node.name.startswith("_"):
                names.add(node.asname or node.name)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _redis_private_names() -> set[str]:
    """Private attributes of the redis-py objects the plugin handles: those their
    classes define, and every ``self._x`` the modules of those classes assign."""
    client = aioredis.Redis()
    objects: list[Any] = [client, client.connection_pool, client.pipeline(), client.register_script("")]
    objects.append(Connection())
    names: set[str] = set()
    modules: set[str] = set()
    for obj in objects:
        names.update(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            if cls.__module__.startswith("redis"):
                names.update(vars(cls))
                modules.add(cls.__module__)
    for module in modules:
        tree = ast.parse(inspect.getsource(sys.modules[module]))
        names.update(
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        )
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_private_module_or_name_of_redis_py_or_hiredis_is_imported() -> None:
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] in ("redis", "hiredis"):
                    assert not any(part.startswith("_") for part in node.module.split(".")), (
                        name,
                        node.module,
                    )
                    assert not any(a.name.startswith("_") for a in node.names), (name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in ("redis", "hiredis"):
                        assert not any(p.startswith("_") for p in alias.name.split(".")), (name, alias.name)


def test_no_class_of_the_plugin_extends_a_redis_py_class() -> None:
    for name, tree in _modules().items():
        imported = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("redis")
            for alias in node.names
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base).split(".")[0].split("[")[0] for base in node.bases}
                assert not bases & (imported | {"aioredis", "redis", "hiredis"}), (name, node.name)


def test_every_private_attribute_used_is_the_plugins_own() -> None:
    trees = _modules()
    own = _own_private_names(trees)
    # Were the plugin to name something of its own like a private attribute of
    # redis-py, an access to redis-py's would pass unseen below.
    assert not own & _redis_private_names()
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                assert node.attr in own, f"{name}:{node.lineno}: .{node.attr} is not the plugin's own"
