"""NatsConfig: URL parsing, validation with precise errors, secrets kept out of sight."""

from __future__ import annotations

import pytest

from dotmac.events import ConfigurationError, InvalidTopicError, create_bus
from dotmac_events_nats import NatsConfig, NatsTransport
from dotmac_events_nats.config import ENV_PASSWORD, ENV_TOKEN
from dotmac_events_nats.subjects import consumer_name, decode_headers, encode_headers, subject_for


def config_of(url: str) -> NatsConfig:
    transport = create_bus(url).transport
    assert isinstance(transport, NatsTransport)
    return transport.config


def test_url_with_several_servers_and_query_settings() -> None:
    config = config_of("nats://n1:4222,n2:4223?stream=ORDERS&ack_wait=12.5&storage=memory&max_deliver=4")
    assert config.server_list == ["nats://n1:4222", "nats://n2:4223"]
    assert config.stream == "ORDERS"
    assert config.ack_wait == 12.5
    assert config.storage == "memory"
    assert config.max_deliver == 4
    assert create_bus("nats://n1:4222?max_deliver=4").transport.default_max_deliveries == 4


def test_user_password_and_token_from_the_url() -> None:
    config = config_of("nats://app:p%40ss@host:4222")
    assert (config.user, config.password, config.token) == ("app", "p@ss", None)
    config = config_of("nats://s3cr3t-token@host")
    assert (config.user, config.token) == (None, "s3cr3t-token")


def test_secrets_stay_out_of_repr_describe_and_errors() -> None:
    bus = create_bus("nats://app:hunter2-pw@host:4222")
    assert "hunter2-pw" not in repr(bus.transport.config)  # type: ignore[attr-defined]
    assert "hunter2-pw" not in str(bus.transport.describe())
    assert bus.transport.describe()["auth"] == "user"
    token_bus = create_bus("nats://tok-hunter2@host")
    assert "tok-hunter2" not in repr(token_bus.transport.config)  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError) as info:
        NatsConfig(user="app", password="hunter2-pw", token="tok-hunter2")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        NatsConfig(servers="nats://app:hunter2-pw@host:4222")
    assert "hunter2" not in str(info.value)


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PASSWORD, "from-env")
    assert NatsConfig(user="app").resolved_password() == "from-env"
    assert NatsConfig().resolved_password() is None
    monkeypatch.setenv(ENV_TOKEN, "env-token")
    assert NatsConfig().resolved_token() == "env-token"
    assert NatsConfig(user="app").resolved_token() is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://host/path", "no path"),
        ("nats://host:99999", "bad port"),
        ("nats://host?stream=a.b", "NatsConfig.stream"),
        ("nats://host?subject_prefix=a..b", "subject_prefix"),
        ("nats://host?subject_prefix=a.*", "subject_prefix"),
        ("nats://host?storage=disk", "storage"),
        ("nats://host?ack_wait=0", "ack_wait"),
        ("nats://host?max_msgs=0", "max_msgs"),
        ("nats://host?max_deliver=0", "max_deliver"),
        ("nats://host?replicas=7", "replicas"),
        ("nats://host?bogus=1", "bogus"),
    ],
)
def test_bad_settings_are_named(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_bus(url)


POSITIVE = (
    "connect_timeout",
    "request_timeout",
    "ping_interval",
    "ack_wait",
    "pull_expires",
    "inactive_threshold",
)
NON_NEGATIVE = ("reconnect_wait", "max_age")


@pytest.mark.parametrize("name", POSITIVE + NON_NEGATIVE)
@pytest.mark.parametrize(("value", "shown"), [("nan", "nan"), ("inf", "inf"), ("-1", "-1.0")])
def test_number_fields_refuse_nan_infinity_and_negatives(name: str, value: str, shown: str) -> None:
    """The wording of the Redis and RabbitMQ plugins (the shared FieldChecks), from a
    URL and from Python alike."""
    bound = "> 0" if name in POSITIVE else ">= 0"
    expected = f"a finite number {bound}" if value == "inf" else f"a number {bound}"
    message = f"NatsConfig.{name} must be {expected}, got {shown}"
    with pytest.raises(ConfigurationError) as info:
        create_bus(f"nats://host?{name}={value}")
    assert str(info.value) == f"invalid nats configuration: {message} @ NatsConfig"
    with pytest.raises(ConfigurationError) as info:
        NatsConfig(**{name: float(value)})
    assert str(info.value) == message


def test_number_fields_take_their_bounds() -> None:
    assert NatsConfig(reconnect_wait=0, max_age=0, ack_wait=0.001, pull_expires=1).reconnect_wait == 0


def test_password_needs_a_user() -> None:
    with pytest.raises(ConfigurationError, match="password needs user"):
        NatsConfig(password="x")


def test_subjects_and_consumer_names() -> None:
    assert subject_for("events", "orders.created") == "events.orders.created"
    for bad in ("a..b", ".a", "a.", ""):
        with pytest.raises(InvalidTopicError):
            subject_for("events", bad)
    # '.' is not allowed in consumer names; distinct pairs still get distinct names.
    first, second = consumer_name("a.b", "c"), consumer_name("a", "b.c")
    assert first != second
    assert "." not in first
    assert len(consumer_name("g" * 249, "t" * 249)) < 120


@pytest.mark.parametrize("value", ["", "x", " lead", "trail ", "\u00a0", "=?utf-8?b?aGk=?=", "日本 語"])
def test_header_values_round_trip_through_the_encoding(value: str) -> None:
    encoded = encode_headers({"x-v": value}, key=value)
    # What the client library does to every value on the way out and in.
    on_the_wire = {k: v.strip() for k, v in encoded.items()}
    key, headers = decode_headers(on_the_wire)
    assert headers == {"x-v": value}
    assert key == value
