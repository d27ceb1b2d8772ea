from __future__ import annotations

import logging
import ssl

import pytest
from attrs import evolve

from dotmac.events import ConfigurationError, TransportUnavailableError, create_bus
from dotmac.events.config import structure_config
from dotmac.events.plugins import get_registry
from dotmac_events_rabbitmq import RabbitMQConfig
from dotmac_events_rabbitmq.config import parse_amqp_url

SECRET = "s3cr3t-Pa55"  # noqa: S105 - a test value


def test_url_parts() -> None:
    fields = parse_amqp_url(f"amqp://app:{SECRET}@mq.example:5673/orders")
    assert fields == {
        "host": "mq.example",
        "port": 5673,
        "username": "app",
        "password": SECRET,
        "virtual_host": "orders",
    }
    assert parse_amqp_url("amqp://h/").get("virtual_host") is None
    assert parse_amqp_url("amqp://h/%2F")["virtual_host"] == "/"
    assert parse_amqp_url("amqps://h")["ssl"] is True


def test_create_bus_with_query_options() -> None:
    bus = create_bus("amqps://u:p%40ss@h/v?queue_type=classic&prefetch_count=7&heartbeat=0")
    config = bus.transport.config  # type: ignore[attr-defined]
    assert isinstance(config, RabbitMQConfig)
    assert (config.queue_type, config.prefetch_count, config.heartbeat) == ("classic", 7, 0)
    assert config.password == "p@ss"
    assert config.effective_port == 5671


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"queue_type": "stream"}, "queue_type"),
        ({"port": 0}, "port"),
        ({"exchange": "amq.topic"}, "exchange"),
        ({"queue_prefix": "has space"}, "queue_prefix"),
        ({"prefetch_count": 0}, "prefetch_count"),
        ({"unroutable": "ignore"}, "unroutable"),
        ({"ssl_cafile": "/ca.pem"}, "ssl is off"),
        ({"ssl": True, "ssl_keyfile": "/k.pem"}, "ssl_certfile"),
        ({"virtual_host": ""}, "virtual_host must be a non-empty str of at most 255 bytes"),
        ({"virtual_host": "é" * 128}, "virtual_host must be a non-empty str of at most 255 bytes"),
    ],
)
def test_bad_values_are_named(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        RabbitMQConfig(**fields)  # type: ignore[arg-type]


def test_bad_url_path_and_unknown_option() -> None:
    with pytest.raises(ConfigurationError):
        parse_amqp_url("amqp://h/a/b")
    with pytest.raises(ConfigurationError, match="^malformed AMQP URL: bad host or port$") as info:
        parse_amqp_url(f"amqp://app:{SECRET}@h:notaport/")
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError, match="not an AMQP URL scheme: 'http'"):
        parse_amqp_url("http://h/")
    with pytest.raises(ConfigurationError):
        create_bus("amqp://h/?no_such_option=1")


def test_password_never_shown() -> None:
    config = RabbitMQConfig(password=SECRET)
    assert SECRET not in repr(config)
    assert SECRET not in str(config.describe())
    spec = get_registry().transport_for_scheme("amqp")
    with pytest.raises(ConfigurationError) as info:
        structure_config(spec, {"password": "", "port": "x"})
    assert SECRET not in str(info.value)


def test_queue_names_never_collide_and_fit() -> None:
    config = RabbitMQConfig()
    assert config.queue_name("a.b", "c") != config.queue_name("a", "b.c")
    long = config.queue_name("t" * 249, "g" * 249)
    assert len(long.encode()) <= 255
    assert long != config.queue_name("t" * 249, "g" * 248 + "h")


async def test_failed_connect_hides_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = RabbitMQConfig(host="127.0.0.1", port=1, password=SECRET, connect_timeout=2)
    bus = create_bus(evolve(config))
    with pytest.raises(TransportUnavailableError) as info:
        await bus.start()
    assert "127.0.0.1:1" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.__cause__)
    assert SECRET not in caplog.text
    await bus.close()


def test_tls_context_checks_certificates_unless_ssl_insecure(caplog: pytest.LogCaptureFixture) -> None:
    assert create_bus("amqp://h").transport._ssl_context() is None  # type: ignore[attr-defined]
    strict = create_bus("amqps://h").transport._ssl_context()  # type: ignore[attr-defined]
    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert "checks are OFF" not in caplog.text
    insecure = create_bus("amqps://h?ssl_insecure=true").transport._ssl_context()  # type: ignore[attr-defined]
    assert (insecure.verify_mode, insecure.check_hostname) == (ssl.CERT_NONE, False)
    assert "RabbitMQ TLS certificate and host name checks are OFF (ssl_insecure=True)" in caplog.text
