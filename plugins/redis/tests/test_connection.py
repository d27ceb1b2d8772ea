"""The transport's connection class (command packing, bounded socket writes) and entry parsing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dotmac_events_redis.transport import _Connection, _entry_message


@pytest.mark.parametrize(
    "args",
    [
        ("XADD", "stream", "*", "ce_id", "é" * 3, "@data", b"\x00\xff" * 100),
        ("EVALSHA", "a" * 40, 1, "key", 0, 2, "n", 1.5, 10**20, -3),
        ("SCRIPT LOAD", "return 1"),
        (b"CLIENT ID",),
        ("SET", bytearray(b"k"), memoryview(b"v")),
        ("SET", "k", b"x" * 100_000),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    ours = b"".join(bytes(chunk) for chunk in _Connection().pack_command(*args))
    theirs = b"".join(bytes(chunk) for chunk in Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("value", [True, None, object()])
def test_values_redis_py_refuses_are_refused(value: object) -> None:
    with pytest.raises(DataError):
        _Connection().pack_command("SET", "k", value)  # type: ignore[arg-type]


# lib_name=None keeps redis-py from sending CLIENT SETINFO to a server that never answers.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_a_write_the_server_does_not_take_times_out_and_disconnects() -> None:
    peers: list[asyncio.StreamWriter] = []

    async def never_read(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = _Connection(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        lib_name=None,
        lib_version=None,
    )
    try:
        await conn.connect()  # type: ignore[no-untyped-call]
        # Far more than the socket buffers hold, so the write has to wait for a reader.
        with pytest.raises(RedisTimeoutError):
            await conn.send_packed_command(b"x" * 64_000_000)
        assert not conn.is_connected
    finally:
        await conn.disconnect()
        for writer in peers:
            writer.close()
        server.close()
        await server.wait_closed()


# -- parsing stream entries ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "headers"),
    [
        ([b"h", b"v", b"@key", b"k", b"@data", b"{}"], {"h": "v"}),
        ({b"h": b"v", b"@key": b"k", b"@data": b"{}"}, {"h": "v"}),
        # Not UTF-8: decoded with replacement characters rather than refused.
        ([b"h", b"\xff", b"@key", b"k", b"@data", b"{}"], {"h": "\ufffd"}),
        (["h", "v", b"@key", b"k", b"@data", b"{}"], {"h": "v"}),
    ],
)
def test_entries_become_messages(fields: Any, headers: dict[str, str]) -> None:
    message = _entry_message("orders", b"1-2", fields)
    assert message.topic == "orders"
    assert message.position == "1-2"
    assert message.key == "k"
    assert message.value == b"{}"
    assert message.headers == headers


def test_an_entry_without_key_or_data_is_an_empty_message() -> None:
    message = _entry_message("orders", b"1-2", [b"h", b"v"])
    assert (message.key, message.value, message.headers) == (None, b"", {"h": "v"})
