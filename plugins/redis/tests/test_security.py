"""TLS with certificate checks, ACL users, and credentials that never leak."""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme
from cryptography.hazmat.primitives import serialization
from redis.asyncio.connection import SSLConnection

from dotmac.events import (
    AuthenticationError,
    ConfigurationError,
    ConsumerOptions,
    Event,
    EventBus,
    TransportError,
)
from dotmac.events.testing import Collector, wait_for
from dotmac_events_redis.testing import RedisServer, redis_server_available

T = 15.0
KEY_PASSWORD = "key-secret-7d1f"

# The ACL rules docs/transports/redis.md documents for an application user; KEYS is
# the key pattern of the application's prefix.
DOCUMENTED_ACL = (
    "on >{password} resetkeys ~{keys} resetchannels -@all "
    "+@stream +@scripting +@transaction +ping +expire +del +client|id +client|unblock"
)


def topic() -> str:
    return f"sec.{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two TLS servers signed by one throw-away CA: one for 127.0.0.1/localhost, one
    whose certificate names another host."""
    if not redis_server_available():
        pytest.skip("redis-server is not installed")
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    servers: dict[str, Any] = {"ca": str(ca_file)}
    # A client certificate whose key is encrypted with a password.
    client = ca.issue_cert("dotmac-client")
    servers["client_cert"] = str(directory / "client.pem")
    servers["client_key"] = str(directory / "client.key")
    client.cert_chain_pems[0].write_to_path(servers["client_cert"])
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    (directory / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    started: list[RedisServer] = []
    try:
        for label, names, client_certs in (
            ("good", ("localhost", "127.0.0.1"), "no"),
            ("wrong_host", ("redis.example",), "no"),
            ("mutual", ("localhost", "127.0.0.1"), "yes"),
        ):
            cert = ca.issue_cert(*names)
            cert_file, key_file = directory / f"{label}.pem", directory / f"{label}.key"
            for blob in cert.cert_chain_pems:
                with cert_file.open("ab") as handle:
                    handle.write(blob.bytes())
            cert.private_key_pem.write_to_path(str(key_file))
            server = RedisServer(
                tls={
                    "tls-cert-file": str(cert_file),
                    "tls-key-file": str(key_file),
                    "tls-ca-cert-file": str(ca_file),
                    "tls-auth-clients": client_certs,
                }
            )
            started.append(server)
            servers[label] = server.start()
        yield servers
    finally:
        for server in started:
            server.cleanup()


async def round_trip(bus: EventBus) -> None:
    async with bus:
        name = topic()
        seen = Collector()
        await bus.subscribe(name, seen, group="g")
        await bus.publish(Event(topic=name, payload={"ok": True}))
        await seen.wait_count(1, T)


async def test_tls_with_certificate_and_host_name_checks(
    tls_servers: dict[str, Any], buses: Callable[..., EventBus]
) -> None:
    server = tls_servers["good"]
    await round_trip(buses(f"rediss://localhost:{server.port}/0", ssl_ca_certs=tls_servers["ca"]))


async def test_tls_refuses_a_certificate_for_another_host(
    tls_servers: dict[str, Any], buses: Callable[..., EventBus]
) -> None:
    server = tls_servers["wrong_host"]
    bus = buses(f"rediss://localhost:{server.port}/0", ssl_ca_certs=tls_servers["ca"])
    with pytest.raises(TransportError, match="certificate") as info:
        await bus.start()
    assert not info.value.retriable


async def test_tls_refuses_an_unknown_certificate_authority(
    tls_servers: dict[str, Any], buses: Callable[..., EventBus]
) -> None:
    server = tls_servers["good"]
    bus = buses(f"rediss://localhost:{server.port}/0")  # system CAs only
    with pytest.raises(TransportError, match="certificate") as info:
        await bus.start()
    assert not info.value.retriable


async def test_tls_host_checks_off_only_when_said_so_and_then_logged(
    tls_servers: dict[str, Any], buses: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    server = tls_servers["wrong_host"]
    caplog.set_level(logging.WARNING, logger="dotmac_events_redis")
    bus = buses(
        f"rediss://localhost:{server.port}/0",
        ssl_ca_certs=tls_servers["ca"],
        ssl_check_hostname=False,
        ssl_insecure=True,
    )
    await round_trip(bus)
    assert any("checks OFF" in r.getMessage() for r in caplog.records)


async def test_tls_client_certificate_with_an_encrypted_key(
    tls_servers: dict[str, Any], buses: Callable[..., EventBus]
) -> None:
    server = tls_servers["mutual"]
    bus = buses(
        f"rediss://localhost:{server.port}/0",
        ssl_ca_certs=tls_servers["ca"],
        ssl_certfile=tls_servers["client_cert"],
        ssl_keyfile=tls_servers["client_key"],
        ssl_password=KEY_PASSWORD,
    )
    if "ssl_password" in inspect.signature(SSLConnection.__init__).parameters:
        await round_trip(bus)
        return
    with pytest.raises(ConfigurationError, match="redis-py 7.2") as info:
        await bus.start()
    assert KEY_PASSWORD not in str(info.value)


@pytest.mark.parametrize("problem", ["wrong key password", "missing CA file"])
async def test_tls_files_that_cannot_be_used_fail_start_for_good(
    tls_servers: dict[str, Any], buses: Callable[..., EventBus], problem: str, tmp_path: Path
) -> None:
    server = tls_servers["mutual"]
    options: dict[str, Any]
    if problem == "wrong key password":
        if "ssl_password" not in inspect.signature(SSLConnection.__init__).parameters:
            pytest.skip("this redis-py takes no key password")
        options = {
            "ssl_ca_certs": tls_servers["ca"],
            "ssl_certfile": tls_servers["client_cert"],
            "ssl_keyfile": tls_servers["client_key"],
            "ssl_password": "not-" + KEY_PASSWORD,
        }
    else:
        options = {"ssl_ca_certs": str(tmp_path / "no-such-ca.pem")}
    bus = buses(f"rediss://localhost:{server.port}/0", **options)
    with pytest.raises(TransportError, match="TLS") as info:
        await bus.start()
    assert not info.value.retriable
    assert KEY_PASSWORD not in str(info.value)


@pytest.fixture
def acl_server(private_server: Callable[..., RedisServer]) -> RedisServer:
    return private_server()


async def set_user(server: RedisServer, name: str, rules: str) -> None:
    admin = aioredis.Redis(host=server.host, port=server.port)
    try:
        await admin.execute_command("ACL", "SETUSER", name, *rules.split())
    finally:
        await admin.aclose()


async def test_acl_user_with_the_documented_rules_can_do_everything(
    acl_server: RedisServer, buses: Callable[..., EventBus], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    await set_user(acl_server, "app", DOCUMENTED_ACL.format(password=password, keys=f"{prefix}*"))
    caplog.set_level(logging.DEBUG)
    url = f"redis://app:{password}@127.0.0.1:{acl_server.port}/0"
    settings = {"max_stream_length": 10, "min_idle_time": 0.2, "reclaim_interval": 0.05}
    name = topic()
    gate = asyncio.Event()

    async def blocked(event: Event) -> None:
        await gate.wait()

    async with buses(url, **settings) as first, buses(url, **settings) as second:
        held = Collector(on_event=blocked)
        sub = await first.subscribe(name, held, group="g")
        await first.publish_many([Event(topic=name, payload={"i": i}) for i in range(20)])
        await wait_for(lambda: held.total_calls == 1, T, what="a held event")
        taker = Collector(fail=lambda e, n: RuntimeError("x") if e.payload["i"] == 0 else None)
        taking = await second.subscribe(name, taker, group="g", options=ConsumerOptions(max_retries=0))
        await sub.stop(timeout=0.1)  # release (script), reclaim, lease, trim, DLQ, ack
        await taker.wait_unique(19, T)
        await wait_for(lambda: taking.dead_lettered == 1, T, what="the dead letter")
        letters = await second.dlq.list(f"{name}.dlq")
        assert len(letters) == 1
        broadcast = Collector()
        await second.subscribe(name, broadcast)
        await first.publish(Event(topic=name, payload={"i": 99}))
        await broadcast.wait_count(1, T)
        await second.subscribe(f"{name}.rpc", lambda e: {"pong": True}, group="rpc")
        reply = await first.request(Event(topic=f"{name}.rpc", payload={}), timeout=T)
        assert reply.payload == {"pong": True}
        for bus in (first, second):
            assert bus.transport.stats()["pending_entries_lost"] == 0  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no permission error expected"
    assert all(password not in r.getMessage() for r in caplog.records)


async def test_acl_refusal_is_precise_and_not_retried(
    acl_server: RedisServer, buses: Callable[..., EventBus]
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    await set_user(acl_server, "narrow", DOCUMENTED_ACL.format(password=password, keys="elsewhere:*"))
    url = f"redis://narrow:{password}@127.0.0.1:{acl_server.port}/0"
    async with buses(url, publish_timeout=30.0) as bus:
        with pytest.raises(AuthenticationError, match="(?i)no permissions") as info:
            await bus.publish(Event(topic=topic(), payload={}))
        assert not info.value.retriable
        assert password not in str(info.value)
        assert "XADD" not in str(info.value), "no command text (event contents) in errors"
        with pytest.raises(TransportError, match="(?i)no permissions"):
            await bus.subscribe(topic(), Collector(), group="g")


async def test_wrong_acl_password_is_refused_without_echoing_it(
    acl_server: RedisServer, buses: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    await set_user(acl_server, "app", DOCUMENTED_ACL.format(password=password, keys="*"))
    caplog.set_level(logging.DEBUG)
    bad = f"not-{password}"
    bus = buses(f"redis://app:{bad}@127.0.0.1:{acl_server.port}/0")
    with pytest.raises(AuthenticationError) as info:
        await bus.start()
    assert not info.value.retriable
    assert bad not in str(info.value) and bad not in repr(info.value)
    assert all(bad not in r.getMessage() for r in caplog.records)


def test_documented_acl_matches_the_docs() -> None:
    docs = Path(__file__).resolve().parents[3] / "docs" / "transports" / "redis.md"
    if not docs.exists():
        pytest.skip("docs are not part of this checkout")
    text = " ".join(docs.read_text().split())
    documented = DOCUMENTED_ACL.format(password="PASSWORD", keys="dotmac:events:*")
    assert documented in text
