"""Configuration of the Kafka transport."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

from dotmac.events.errors import ConfigurationError

__all__ = ["ENV_OAUTH_TOKEN", "ENV_SASL_PASSWORD", "ENV_SASL_USERNAME", "ENV_SSL_PASSWORD", "KafkaConfig"]

ENV_SASL_USERNAME = "DOTMAC_EVENTS_KAFKA_SASL_USERNAME"
ENV_SASL_PASSWORD = "DOTMAC_EVENTS_KAFKA_SASL_PASSWORD"  # noqa: S105 - a variable name, not a secret
ENV_OAUTH_TOKEN = "DOTMAC_EVENTS_KAFKA_OAUTH_TOKEN"  # noqa: S105
ENV_SSL_PASSWORD = "DOTMAC_EVENTS_KAFKA_SSL_PASSWORD"  # noqa: S105

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
COMPRESSION_TYPES = ("gzip", "snappy", "lz4", "zstd")


def _servers(value: Any) -> str:
    # Python callers may pass a list of "host:port"; URLs and TOML give a comma-separated string.
    if isinstance(value, (list, tuple)):
        return ",".join(str(v).strip() for v in value)
    return str(value).strip() if value is not None else ""


def _check_servers(_inst: Any, _attr: Any, value: str) -> None:
    hosts = [h.strip() for h in value.split(",")]
    if not value or not all(hosts):
        raise ConfigurationError(
            f"KafkaConfig.bootstrap_servers must be 'host:port[,host:port...]', got {value!r}"
        )
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep:
            continue  # aiokafka defaults the port to 9092
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"KafkaConfig.bootstrap_servers: bad address {host!r}")
        if any(c in name for c in "/@?# "):
            raise ConfigurationError(f"KafkaConfig.bootstrap_servers: bad address {host!r}")


def _acks(value: Any) -> str:
    text = str(value).strip().lower()
    if text in ("all", "-1"):
        return "all"
    if text in ("0", "1"):
        return text
    raise ConfigurationError(f"KafkaConfig.acks must be 'all', 1 or 0, got {value!r}")


def _compression(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "none"):
        return None
    if text not in COMPRESSION_TYPES:
        raise ConfigurationError(
            f"KafkaConfig.compression_type must be one of {', '.join(COMPRESSION_TYPES)} or None, "
            f"got {value!r}"
        )
    return text


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _protocol(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in SECURITY_PROTOCOLS:
        raise ConfigurationError(
            f"KafkaConfig.security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, got {value!r}"
        )


def _mechanism(_inst: Any, _attr: Any, value: Any) -> None:
    if value is not None and value not in SASL_MECHANISMS:
        raise ConfigurationError(
            f"KafkaConfig.sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}, got {value!r}"
        )


def _int_at_least(minimum: int) -> Any:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(f"KafkaConfig.{attr.name} must be an int >= {minimum}, got {value!r}")

    return check


def _optional_int_at_least(minimum: int) -> Any:
    inner = _int_at_least(minimum)

    def check(inst: Any, attr: Any, value: Any) -> None:
        if value is not None:
            inner(inst, attr, value)

    return check


def _optional_text(_inst: Any, attr: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        # Never echo the value: several of these fields hold secrets.
        raise ConfigurationError(f"KafkaConfig.{attr.name} must be a non-empty str or None")


def _client_id(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ConfigurationError(f"KafkaConfig.client_id must be a non-empty str, got {value!r}")


def _topic_config(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"KafkaConfig.topic_config must be a mapping, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def _isolation(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in ("read_uncommitted", "read_committed"):
        raise ConfigurationError(
            f"KafkaConfig.isolation_level must be 'read_uncommitted' or 'read_committed', got {value!r}"
        )


def _ssl_context(_inst: Any, _attr: Any, value: Any) -> None:
    import ssl

    if value is not None and not isinstance(value, ssl.SSLContext):
        raise ConfigurationError(
            f"KafkaConfig.ssl_context must be an ssl.SSLContext, got {type(value).__name__}"
        )


def _token_provider(_inst: Any, _attr: Any, value: Any) -> None:
    if value is None:
        return
    from aiokafka.abc import AbstractTokenProvider

    if not isinstance(value, AbstractTokenProvider):
        raise ConfigurationError(
            "KafkaConfig.sasl_oauth_token_provider must be an aiokafka.abc.AbstractTokenProvider, "
            f"got {type(value).__name__}"
        )


@frozen
class KafkaConfig:
    """``kafka://host:port[,host:port]?acks=all&compression_type=snappy``.

    Connection and security:

    - ``bootstrap_servers``: ``"host:port,host:port"`` (or a list of them).
    - ``client_id``: reported to the broker (quotas, logs).
    - ``security_protocol``: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
    - ``sasl_mechanism``: ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` or
      ``OAUTHBEARER`` (``PLAIN`` when a SASL protocol is chosen without one).
    - ``sasl_username`` / ``sasl_password``: for PLAIN and SCRAM; both may come
      from ``$DOTMAC_EVENTS_KAFKA_SASL_USERNAME`` / ``$DOTMAC_EVENTS_KAFKA_SASL_PASSWORD``.
    - ``sasl_oauth_token`` (or ``$DOTMAC_EVENTS_KAFKA_OAUTH_TOKEN``) or
      ``sasl_oauth_token_provider`` (an ``aiokafka.abc.AbstractTokenProvider`` that
      refreshes tokens): for OAUTHBEARER.
    - ``ssl_context``: a ready ``ssl.SSLContext``; otherwise one is built from
      ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_password`` (or
      ``$DOTMAC_EVENTS_KAFKA_SSL_PASSWORD``), verifying the broker certificate and
      host name (``ssl_check_hostname=False`` turns the host name check off).

    Secrets never appear in ``repr()``, logs or error messages.

    Publishing:

    - ``acks``: ``"all"`` (default: every in-sync replica stored it), ``1`` or ``0``.
    - ``enable_idempotence``: ``None`` (default) enables it when ``acks="all"`` and
      falls back, with a warning, when the broker cannot do it; ``True`` requires
      it; ``False`` turns it off.
    - ``compression_type``: ``gzip``, ``snappy``, ``lz4``, ``zstd`` or ``None``.
    - ``linger_ms``, ``max_batch_size``, ``max_request_size``: producer batching.
      ``publish`` returns once the broker acknowledged, so a linger only delays a
      caller that publishes one event at a time; concurrent publishes and
      ``publish_many`` fill batches while a request is in flight whatever it is.
    - ``transactional_id``: when set, every ``publish``/``publish_many`` call is one
      Kafka transaction (all records of the batch are committed together, or none is
      visible to ``read_committed`` readers); needs a broker with transactions and
      implies idempotence. ``transaction_timeout_ms`` bounds one transaction. Give each
      running process its own id: a second producer with the same id fences the first.
    - ``request_timeout_ms``: how long a publish may wait for the broker's
      acknowledgement before it fails with a retriable error.

    Topics (created on first use when ``auto_create_topics``):

    - ``num_partitions``, ``replication_factor``, ``topic_config`` (broker topic
      settings such as ``{"retention.ms": "604800000"}``).

    Consuming:

    - ``session_timeout_ms``, ``heartbeat_interval_ms``, ``rebalance_timeout_ms``,
      ``max_poll_interval_ms``: consumer group membership (a crashed member is
      noticed after ``session_timeout_ms``).
    - ``isolation_level``: ``read_uncommitted`` (default) or ``read_committed``, which
      hides records of open and aborted transactions (use it with ``transactional_id``).
    - ``fetch_max_wait_ms``, ``fetch_min_bytes``, ``max_partition_fetch_bytes``: fetching.
    - ``commit_interval_ms``: handled offsets are committed at most this often (and
      always on rebalance and shutdown); it bounds what a crash redelivers.
    - ``revoke_timeout_ms``: on a rebalance, how long running handlers of revoked
      partitions may finish (and get committed) before the partitions are given up.
    - ``join_timeout_ms``: how long ``subscribe()`` waits to be assigned and positioned.
    - ``metadata_max_age_ms``: metadata refresh period.
    """

    bootstrap_servers: str = field(default="localhost:9092", converter=_servers, validator=_check_servers)
    client_id: str = field(default="dotmac-events", validator=_client_id)

    acks: str = field(default="all", converter=_acks)
    enable_idempotence: bool | None = None
    compression_type: str | None = field(default=None, converter=_compression)
    linger_ms: int = field(default=0, validator=_int_at_least(0))
    max_batch_size: int = field(default=16_384, validator=_int_at_least(1))
    max_request_size: int = field(default=1_048_576, validator=_int_at_least(1))
    request_timeout_ms: int = field(default=30_000, validator=_int_at_least(1))
    transactional_id: str | None = field(default=None, validator=_optional_text)
    transaction_timeout_ms: int = field(default=60_000, validator=_int_at_least(1))
    retry_backoff_ms: int = field(default=100, validator=_int_at_least(0))

    auto_create_topics: bool = True
    num_partitions: int = field(default=3, validator=_int_at_least(1))
    replication_factor: int = field(default=1, validator=_int_at_least(1))
    topic_config: dict[str, str] = field(factory=dict, converter=_topic_config)

    session_timeout_ms: int = field(default=10_000, validator=_int_at_least(1))
    heartbeat_interval_ms: int = field(default=3_000, validator=_int_at_least(1))
    rebalance_timeout_ms: int | None = field(default=None, validator=_optional_int_at_least(1))
    max_poll_interval_ms: int = field(default=300_000, validator=_int_at_least(1))
    isolation_level: str = field(default="read_uncommitted", validator=_isolation)
    fetch_max_wait_ms: int = field(default=500, validator=_int_at_least(0))
    fetch_min_bytes: int = field(default=1, validator=_int_at_least(1))
    max_partition_fetch_bytes: int = field(default=1_048_576, validator=_int_at_least(1))
    commit_interval_ms: int = field(default=1_000, validator=_int_at_least(0))
    revoke_timeout_ms: int = field(default=5_000, validator=_int_at_least(0))
    join_timeout_ms: int = field(default=60_000, validator=_int_at_least(1))
    metadata_max_age_ms: int = field(default=300_000, validator=_int_at_least(1))

    security_protocol: str = field(default="PLAINTEXT", converter=_upper, validator=_protocol)
    sasl_mechanism: str | None = field(default=None, converter=_upper, validator=_mechanism)
    sasl_username: str | None = field(default=None, validator=_optional_text)
    sasl_password: str | None = field(default=None, repr=False, validator=_optional_text)
    sasl_oauth_token: str | None = field(default=None, repr=False, validator=_optional_text)
    sasl_oauth_token_provider: Any = field(default=None, repr=False, validator=_token_provider)
    ssl_context: Any = field(default=None, repr=False, validator=_ssl_context)
    ssl_cafile: str | None = field(default=None, validator=_optional_text)
    ssl_certfile: str | None = field(default=None, validator=_optional_text)
    ssl_keyfile: str | None = field(default=None, validator=_optional_text)
    ssl_password: str | None = field(default=None, repr=False, validator=_optional_text)
    ssl_check_hostname: bool = True

    def __attrs_post_init__(self) -> None:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl_fields = [
            name
            for name in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_oauth_token")
            if getattr(self, name) is not None
        ]
        if self.sasl_oauth_token_provider is not None:
            sasl_fields.append("sasl_oauth_token_provider")
        if sasl_fields and not sasl:
            raise ConfigurationError(
                f"KafkaConfig: {', '.join(sasl_fields)} set but security_protocol is "
                f"{self.security_protocol}; use SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_fields = [
            name
            for name in ("ssl_context", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
            if getattr(self, name) is not None
        ]
        if tls_fields and not tls:
            raise ConfigurationError(
                f"KafkaConfig: {', '.join(tls_fields)} set but security_protocol is "
                f"{self.security_protocol}; use SSL or SASL_SSL"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigurationError("KafkaConfig: ssl_keyfile needs ssl_certfile")
        if self.transactional_id is not None and (self.acks != "all" or self.enable_idempotence is False):
            raise ConfigurationError(
                "KafkaConfig: transactional_id requires acks='all' and idempotence "
                "(enable_idempotence None or True)"
            )
        if self.enable_idempotence and self.acks != "all":
            raise ConfigurationError("KafkaConfig: enable_idempotence=True requires acks='all'")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigurationError(
                "KafkaConfig: heartbeat_interval_ms must be lower than session_timeout_ms "
                f"({self.heartbeat_interval_ms} >= {self.session_timeout_ms})"
            )

    # -- resolved settings (secrets from the environment) -------------------------------
    @property
    def mechanism(self) -> str | None:
        """The SASL mechanism in effect, ``None`` without SASL."""
        if not self.security_protocol.startswith("SASL_"):
            return None
        return self.sasl_mechanism or "PLAIN"

    def resolved_username(self) -> str | None:
        return self.sasl_username or os.environ.get(ENV_SASL_USERNAME) or None

    def resolved_password(self) -> str | None:
        return self.sasl_password or os.environ.get(ENV_SASL_PASSWORD) or None

    def resolved_oauth_token(self) -> str | None:
        return self.sasl_oauth_token or os.environ.get(ENV_OAUTH_TOKEN) or None

    def resolved_ssl_password(self) -> str | None:
        return self.ssl_password or os.environ.get(ENV_SSL_PASSWORD) or None
