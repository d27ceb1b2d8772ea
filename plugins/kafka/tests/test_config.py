"""KafkaConfig, URLs, security settings and secrets (no broker needed)."""

from __future__ import annotations

import logging
import ssl
import subprocess
from pathlib import Path

import pytest

from dotmac.events import AuthenticationError, ConfigurationError, create_bus
from dotmac_events_kafka import KafkaConfig, KafkaTransport, create_kafka_bus
from dotmac_events_kafka.testing import fast_url
from dotmac_events_kafka.transport import build_ssl_context, client_options

SECRET = "s3cr3t-Pa55w0rd-9f1c"


def test_seed_example_works_verbatim() -> None:
    bus = create_kafka_bus(
        KafkaConfig(bootstrap_servers="localhost:9092", acks="all", compression_type="snappy")
    )
    assert isinstance(bus.transport, KafkaTransport)
    assert bus.transport.config.compression_type == "snappy"
    caps = bus.capabilities
    assert caps.persistent and caps.partitions and caps.readable and caps.restartable
    assert caps.ordering == "key"


def test_url_with_several_brokers_and_query() -> None:
    bus = create_bus("kafka://h1:9092,h2:9093?acks=1&compression_type=zstd&num_partitions=6&linger_ms=20")
    config = bus.transport.config
    assert config.bootstrap_servers == "h1:9092,h2:9093"
    assert (config.acks, config.compression_type, config.num_partitions, config.linger_ms) == (
        "1",
        "zstd",
        6,
        20,
    )


def test_url_credentials_mean_sasl_and_stay_out_of_repr() -> None:
    bus = create_bus(f"kafka://svc:{SECRET}@h1:9092?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512")
    config = bus.transport.config
    assert (config.sasl_username, config.sasl_password) == ("svc", SECRET)
    assert config.security_protocol == "SASL_SSL"
    assert config.mechanism == "SCRAM-SHA-512"
    assert SECRET not in repr(config)
    assert SECRET not in repr(bus.transport)
    assert SECRET not in str(bus.transport.describe())


def test_producer_does_not_linger_by_default() -> None:
    # publish() waits for the broker's acknowledgement: a linger would be paid by
    # every caller publishing one event at a time.
    transport = create_bus("kafka://h1:9092").transport
    assert transport._producer_options()["linger_ms"] == 0
    assert create_bus("kafka://h1:9092?linger_ms=20").transport._producer_options()["linger_ms"] == 20


def test_fast_url_for_tests() -> None:
    config = create_bus(fast_url("127.0.0.1:9092", num_partitions=2)).transport.config
    # An unknown broker gets timings Apache Kafka's default limits accept.
    assert (config.session_timeout_ms, config.num_partitions) == (6000, 2)
    tansu = create_bus(fast_url("127.0.0.1:9092", broker="tansu")).transport.config
    assert tansu.session_timeout_ms == 2000


def test_dict_and_toml_shapes() -> None:
    bus = create_bus(
        {"transport": "kafka", "bootstrap_servers": "a:1,b:2", "topic_config": {"retention.ms": 1}}
    )
    assert bus.transport.config.bootstrap_servers == "a:1,b:2"
    assert bus.transport.config.topic_config == {"retention.ms": "1"}
    assert KafkaConfig(bootstrap_servers=["a:1", "b:2"]).bootstrap_servers == "a:1,b:2"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
        ({"bootstrap_servers": "h1:notaport"}, "bad address"),
        ({"acks": "most"}, "acks"),
        ({"compression_type": "brotli"}, "compression_type"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"sasl_username": "u"}, "SASL_SSL"),
        ({"ssl_cafile": "/ca.pem"}, "use SSL"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "ssl_certfile"),
        ({"acks": 1, "enable_idempotence": True}, "requires acks='all'"),
        ({"num_partitions": 0}, "num_partitions"),
        ({"heartbeat_interval_ms": 5000, "session_timeout_ms": 3000}, "heartbeat_interval_ms"),
        ({"ssl_context": "not a context", "security_protocol": "SSL"}, "ssl.SSLContext"),
        ({"bootstrap_servers": "user@h1:9092"}, "bad address 'user@h1:9092'"),
        ({"client_id": ""}, "client_id must be a non-empty str"),
        ({"topic_config": ["retention.ms=1"]}, "topic_config must be a mapping, got list"),
        ({"isolation_level": "dirty"}, "isolation_level must be 'read_uncommitted' or 'read_committed'"),
        (
            {"security_protocol": "SASL_SSL", "sasl_oauth_token_provider": "a token"},
            "must be an aiokafka.abc.AbstractTokenProvider, got str",
        ),
        ({"transactional_id": "billing-1", "acks": 1}, "transactional_id requires acks='all'"),
        ({"transactional_id": "billing-1", "enable_idempotence": False}, "transactional_id requires"),
    ],
)
def test_bad_settings_are_rejected_precisely(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        KafkaConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_and_spellings_of_optional_settings() -> None:
    # A host without a port is aiokafka's default port; "none" and None mean no compression.
    assert KafkaConfig(bootstrap_servers="h1,h2:9093").bootstrap_servers == "h1,h2:9093"
    assert KafkaConfig(compression_type="none").compression_type is None
    assert KafkaConfig(compression_type=None).compression_type is None
    assert KafkaConfig(topic_config=None).topic_config == {}  # type: ignore[arg-type]


def test_a_token_provider_needs_a_sasl_protocol() -> None:
    from aiokafka.abc import AbstractTokenProvider

    class Provider(AbstractTokenProvider):
        async def token(self) -> str:
            return SECRET

    with pytest.raises(
        ConfigurationError, match="sasl_oauth_token_provider set but security_protocol is PLAINTEXT"
    ):
        KafkaConfig(sasl_oauth_token_provider=Provider())
    config = KafkaConfig(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=Provider()
    )
    assert client_options(config)["sasl_oauth_token_provider"] is config.sasl_oauth_token_provider


def test_bad_url_values_name_the_field_without_the_secret() -> None:
    with pytest.raises(ConfigurationError, match="linger_ms"):
        create_bus("kafka://h1:9092?linger_ms=soon")
    with pytest.raises(ConfigurationError, match="unknown|extra|bogus"):
        create_bus("kafka://h1:9092?bogus=1")
    with pytest.raises(ConfigurationError) as info:
        KafkaConfig(sasl_password="")
    assert "sasl_password" in str(info.value)


def test_sasl_options_and_missing_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOTMAC_EVENTS_KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError, match="sasl_password"):
        client_options(KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_username="u"))
    monkeypatch.setenv("DOTMAC_EVENTS_KAFKA_SASL_PASSWORD", SECRET)
    config = KafkaConfig(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="u"
    )
    options = client_options(config)
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_password"] == SECRET
    assert SECRET not in repr(config)


def test_oauthbearer_static_token_provider() -> None:
    config = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token=SECRET)
    options = client_options(config)
    provider = options["sasl_oauth_token_provider"]
    assert SECRET not in repr(provider)
    assert SECRET not in repr(config)
    with pytest.raises(ConfigurationError, match="OAUTHBEARER"):
        client_options(KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER"))


def _make_cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def test_ssl_context_verifies_by_default(tmp_path: Path) -> None:
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("openssl not installed")
    key, cert = _make_cert(tmp_path)
    config = KafkaConfig(
        security_protocol="SSL", ssl_cafile=str(cert), ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    context = build_ssl_context(config)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    relaxed = build_ssl_context(
        KafkaConfig(security_protocol="SSL", ssl_cafile=str(cert), ssl_check_hostname=False)
    )
    assert relaxed is not None and relaxed.check_hostname is False
    with pytest.raises(ConfigurationError, match="not found"):
        build_ssl_context(KafkaConfig(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem")))
    own = ssl.create_default_context()
    assert build_ssl_context(KafkaConfig(security_protocol="SSL", ssl_context=own)) is own
    assert build_ssl_context(KafkaConfig()) is None


async def test_secret_never_logged_when_authentication_fails(
    kafka_servers: str, kafka_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A SASL client against a broker without SASL fails (Tansu), or is let in by a broker
    that takes any PLAIN credentials (noida-db); neither logs nor errors show the password,
    aiokafka's DEBUG log of the SASL request included."""
    caplog.set_level(logging.DEBUG)
    bus = create_kafka_bus(
        KafkaConfig(
            bootstrap_servers=kafka_servers,
            security_protocol="SASL_PLAINTEXT",
            sasl_username="svc",
            sasl_password=SECRET,
            request_timeout_ms=3000,
        )
    )
    error: BaseException | None = None
    try:
        await bus.start()
    except Exception as exc:
        error = exc
    await bus.close()
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert SECRET not in text
    if kafka_kind == "tansu":
        # aiokafka reports the refused SASL handshake as "Unable to bootstrap"; the port
        # accepts connections, so the transport blames the login.
        assert isinstance(error, AuthenticationError), repr(error)
    elif kafka_kind == "noida":
        assert error is None and "SASL authentication bytes hidden" in text
    assert SECRET not in str(error) and SECRET not in repr(error)
    assert SECRET not in repr(bus) and SECRET not in repr(bus.transport)
