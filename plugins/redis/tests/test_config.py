"""RedisConfig, URL parsing and plugin registration (no server needed)."""

from __future__ import annotations

import attrs
import pytest

import dotmac.events
from dotmac.events import ConfigurationError, create_bus
from dotmac.events.plugins import get_registry
from dotmac_events_redis import RedisConfig, RedisTransport, create_redis_bus
from dotmac_events_redis.transport import CAPABILITIES

SECRET = "s3cr3t-p@ss/word"


def test_seed_api_verbatim() -> None:
    bus = create_redis_bus(
        RedisConfig(host="redis.internal", port=6380, max_stream_length=5000, prefetch_count=20)
    )
    assert isinstance(bus.transport, RedisTransport)
    assert bus.transport.config.host == "redis.internal"
    assert bus.transport.config.port == 6380
    assert bus.transport.config.max_stream_length == 5000
    assert bus.transport.config.prefetch_count == 20
    assert bus.capabilities == CAPABILITIES


def test_core_resolves_plugin_names_lazily() -> None:
    assert dotmac.events.RedisConfig is RedisConfig
    assert dotmac.events.create_redis_bus is create_redis_bus


def test_registered_for_both_schemes() -> None:
    registry = get_registry()
    assert registry.transport_for_scheme("redis").name == "redis"
    assert registry.transport_for_scheme("rediss").name == "redis"
    caps = registry.transport_named("redis").capabilities
    assert caps.persistent and caps.consumer_groups and caps.readable and caps.restartable
    assert caps.request_reply and caps.replay_backlog and caps.batch_publish
    assert caps.ordering == "topic"


def test_url_fields() -> None:
    bus = create_bus(
        "redis://app:p%40ss@cache.example:6390/3?max_stream_length=10&prefetch_count=7"
        "&trim_policy=maxlen&min_idle_time=2.5&namespace=acme"
    )
    config = bus.transport.config
    assert (config.host, config.port, config.db) == ("cache.example", 6390, 3)
    assert (config.username, config.password) == ("app", "p@ss")
    assert config.max_stream_length == 10
    assert config.prefetch_count == 7
    assert config.trim_policy == "maxlen"
    assert config.min_idle_time == 2.5
    assert config.stream_key("orders") == "dotmac:events:acme:orders"
    assert not config.ssl


def test_rediss_means_tls_with_checks() -> None:
    config = create_bus("rediss://cache.example/0?ssl_ca_certs=/etc/ca.pem").transport.config
    assert config.ssl
    assert config.ssl_cert_reqs == "required"
    assert config.ssl_check_hostname


def test_dict_config() -> None:
    bus = create_bus({"transport": "redis", "host": "h", "max_stream_length": None, "key_prefix": "app:"})
    assert bus.transport.config.max_stream_length is None
    assert bus.transport.config.stream_key("a.b") == "app:a.b"


def test_key_layout() -> None:
    assert RedisConfig().stream_key("orders.created") == "dotmac:events:orders.created"
    assert RedisConfig(namespace="t-1").stream_key("orders.created") == "dotmac:events:t-1:orders.created"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"db": -1}, "db"),
        ({"prefetch_count": 0}, "prefetch_count"),
        ({"max_stream_length": 0}, "max_stream_length"),
        ({"trim_policy": "lossy"}, "trim_policy"),
        ({"min_idle_time": 0}, "min_idle_time"),
        ({"namespace": "a:b"}, "namespace"),
        ({"namespace": "../x"}, "namespace"),
        ({"key_prefix": "has space"}, "key_prefix"),
        ({"host": ""}, "host"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"ssl_ca_certs": "/ca.pem"}, "ssl is off"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        RedisConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_url_option_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="prefech_count"):
        create_bus("redis://localhost/0?prefech_count=3")


def test_bad_db_path() -> None:
    with pytest.raises(ConfigurationError, match="database number"):
        create_bus("redis://localhost/zero")


def test_turning_tls_checks_off_needs_an_explicit_flag() -> None:
    with pytest.raises(ConfigurationError, match="ssl_check_hostname"):
        RedisConfig(ssl=True, ssl_check_hostname=False)
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs"):
        RedisConfig(ssl=True, ssl_cert_reqs="none")
    with pytest.raises(ConfigurationError):
        create_bus("rediss://localhost/0?ssl_check_hostname=false")
    insecure = RedisConfig(ssl=True, ssl_check_hostname=False, ssl_insecure=True)
    assert not insecure.ssl_check_hostname


def test_password_never_in_reprs_or_errors() -> None:
    config = RedisConfig(password=SECRET, ssl=True, ssl_password=SECRET, username="app")
    bus = create_redis_bus(config)
    for text in (repr(config), repr(bus.transport), repr(bus), str(bus.transport.describe())):
        assert SECRET not in text
    assert "app" in repr(config)
    evolved = attrs.evolve(config, port=6390)
    assert SECRET not in repr(evolved)
    with pytest.raises(ConfigurationError) as info:
        create_bus(f"redis://app:{SECRET}@localhost:notaport/0")
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        create_bus(f"redis://app:{SECRET}@localhost/0?bogus=1")
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        RedisConfig(password="")
    assert "password" in str(info.value)
