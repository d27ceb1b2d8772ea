"""Fatal Redis answers fail the call that met them at once, naming the setting or the
ACL permission; each provoked on a private redis-server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rexc

from dotmac.events import AuthenticationError, ConfigurationError, Event, EventBus, TransportUnavailableError
from dotmac.events.testing import Collector
from dotmac_events_redis.errors import is_retriable, transport_error
from dotmac_events_redis.testing import RedisServer


def topic() -> str:
    return f"err.{uuid.uuid4().hex[:8]}"


async def admin(server: RedisServer, *command: str) -> object:
    client = aioredis.Redis(host=server.host, port=server.port)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()


async def test_wrongpass_fails_start_with_an_authentication_error(
    private_server: Callable[..., RedisServer], buses: Callable[..., EventBus]
) -> None:
    server = private_server(password="right-horse-battery")
    bus = buses(f"redis://:wrong-horse-battery@127.0.0.1:{server.port}/0")
    with pytest.raises(AuthenticationError) as info:
        await bus.start()
    assert info.value.permission == "authenticate"
    assert "wrong-horse-battery" not in str(info.value)


async def test_noperm_names_the_missing_permission_and_is_not_retried(
    private_server: Callable[..., RedisServer], buses: Callable[..., EventBus]
) -> None:
    server = private_server()
    # A user that may connect but has no stream commands.
    await admin(server, "ACL", "SETUSER", "nostream", "on", ">pw-nostream", "~*", "+@connection", "+ping")
    async with buses(f"redis://nostream:pw-nostream@127.0.0.1:{server.port}/0", publish_timeout=30.0) as bus:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as info:
            await bus.publish(Event(topic=topic(), payload={}))
        assert time.monotonic() - started < 5, "an ACL refusal is not retried until publish_timeout"
        assert info.value.permission is not None and info.value.permission.startswith("+")
        assert "nostream" in str(info.value) or "permission" in str(info.value)
        with pytest.raises(AuthenticationError):
            await bus.subscribe(topic(), Collector(), group="g")


async def test_oom_under_noeviction_fails_publish_naming_maxmemory(
    private_server: Callable[..., RedisServer], buses: Callable[..., EventBus]
) -> None:
    server = private_server(extra_args=["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"])
    async with buses(f"redis://127.0.0.1:{server.port}/0", publish_timeout=30.0) as bus:
        name = topic()
        started = time.monotonic()
        with pytest.raises(ConfigurationError) as info:
            for _ in range(200):  # about 4 MB: past maxmemory
                await bus.publish_many([Event(topic=name, payload={"blob": "x" * 2000}) for _ in range(10)])
        assert time.monotonic() - started < 20
    assert info.value.setting == "maxmemory"
    assert "max_stream_length" in str(info.value)


async def test_readonly_replica_fails_publish_naming_the_url(
    private_server: Callable[..., RedisServer], buses: Callable[..., EventBus]
) -> None:
    primary = private_server()
    replica = private_server(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    async with buses(f"redis://127.0.0.1:{replica.port}/0", publish_timeout=30.0) as bus:
        started = time.monotonic()
        with pytest.raises(ConfigurationError) as info:
            await bus.publish(Event(topic=topic(), payload={}))
        assert time.monotonic() - started < 5
        with pytest.raises(ConfigurationError, match="read-only replica"):
            await bus.subscribe(topic(), Collector(), group="g")
    assert info.value.setting == "url"
    assert "replica" in str(info.value)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (
            rexc.ResponseError("NOPERM User x has no permissions to run the 'xadd' command"),
            AuthenticationError,
        ),
        (rexc.AuthenticationError("WRONGPASS invalid username-password pair"), AuthenticationError),
        (rexc.ResponseError("OOM command not allowed when used memory > 'maxmemory'."), ConfigurationError),
        (rexc.ReadOnlyError("You can't write against a read only replica."), ConfigurationError),
        (rexc.ConnectionError("Connection refused"), TransportUnavailableError),
        (rexc.ResponseError("LOADING Redis is loading the dataset in memory"), TransportUnavailableError),
    ],
)
def test_classification(exc: BaseException, kind: type[Exception]) -> None:
    error = transport_error("x", exc)
    assert isinstance(error, kind), error
    assert is_retriable(exc) is (kind is TransportUnavailableError)


def test_noperm_permission_is_the_command() -> None:
    error = transport_error(
        "x", rexc.ResponseError("NOPERM User x has no permissions to run the 'xadd' command")
    )
    assert isinstance(error, AuthenticationError) and error.permission == "+xadd"
