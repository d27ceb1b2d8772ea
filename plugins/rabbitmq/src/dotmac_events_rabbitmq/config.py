"""Configuration of the RabbitMQ transport and the parsing of its URLs."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from attrs import field, frozen

from dotmac.events.config_fields import FieldChecks
from dotmac.events.errors import ConfigurationError

__all__ = ["ENV_PASSWORD", "RabbitMQConfig", "parse_amqp_url"]

ENV_PASSWORD = "DOTMAC_EVENTS_RABBITMQ_PASSWORD"  # noqa: S105 - a variable name, not a secret

# AMQP 0-9-1 names (exchanges, queues) are short strings: at most 255 bytes.
MAX_NAME_BYTES = 255
_NAME_RE = re.compile(r"[A-Za-z0-9._:-]+")


_check = FieldChecks("RabbitMQConfig")
_fail = _check.error
_int_in = _check.int_in
_optional = _check.optional
_positive_number = _check.positive_number
_optional_text = _check.optional_text  # never echoes the value: it also guards secrets
_host = _check.host
_choice = _check.choice
_is_bool = _check.is_bool


def _vhost(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_NAME_BYTES:
        raise _fail("virtual_host", "a non-empty str of at most 255 bytes", value)


def _name(limit: int) -> Any:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if not isinstance(value, str) or len(value) > limit or not _NAME_RE.fullmatch(value):
            raise _fail(attr.name, f"1 to {limit} ASCII letters, digits, '.', '_', ':' or '-'", value)
        if value.startswith("amq."):
            raise _fail(attr.name, "a name outside the broker's reserved 'amq.' prefix", value)

    return check


@frozen
class RabbitMQConfig:
    """``amqp://[user[:password]@]host[:port][/vhost]?option=value`` (``amqps://`` for TLS).

    Connection
        ``host``, ``port`` (5672, or 5671 with TLS), ``virtual_host`` (the URL path,
        percent-encoded: ``/`` or no path is the default vhost ``/``),
        ``username`` and ``password`` (``$DOTMAC_EVENTS_RABBITMQ_PASSWORD`` when unset;
        the password never appears in reprs, logs, errors or ``describe()``).
        ``heartbeat`` (seconds, 0 turns heartbeats off), ``connect_timeout`` (seconds
        for ``start()``), ``reconnect_interval`` (seconds between reconnection
        attempts after the connection dropped), ``connection_name`` (shown by the
        broker's connection list).

    TLS
        ``ssl`` (implied by ``amqps://``), ``ssl_cafile`` (CA bundle to trust),
        ``ssl_certfile``/``ssl_keyfile`` (client certificate). Certificates and host
        names are always checked unless ``ssl_insecure=True``, which logs a warning at
        every start.

    Topology
        ``exchange``: the durable topic exchange of the bus (routing key = topic).
        ``queue_prefix``: queues are named ``{queue_prefix}:{topic}:{group}``;
        broadcast subscriptions get ``{queue_prefix}:{topic}:@broadcast.<id>``
        (exclusive, deleted with the subscription) and dead-letter topics
        ``{queue_prefix}:{topic}:@retained``. ``queue_type``: ``"quorum"`` (default;
        replicated, counts redeliveries) or ``"classic"``.

    Consuming
        ``prefetch_count`` (optional) caps the ``basic.qos`` of every consumer on this
        bus (``ConsumerOptions.prefetch_count`` sets it per subscription; each topic
        of a subscription is a consumer of its own).
        ``max_deliveries`` (default 10) is the dead-letter threshold when
        ``ConsumerOptions.max_deliveries`` is not set: quorum queues count every
        delivery (``x-delivery-count``); classic queues only know "redelivered", so
        the threshold cannot stop a message that keeps crashing its consumer there.

    Publishing
        ``publish_timeout``: how long a publish keeps retrying while the broker is
        unreachable before it fails. ``unroutable``: what to do with an event that no
        queue is bound for — ``"drop"`` (default; counted and logged at debug level,
        as a topic exchange does) or ``"error"`` (``publish`` raises ``PublishError``).
        Dead letters always have a queue, so they are never unroutable.
    """

    host: str = field(default="localhost", validator=_host)
    port: int | None = field(default=None, validator=_optional(_int_in(1, 65535)))
    virtual_host: str = field(default="/", validator=_vhost)
    username: str = field(default="guest", validator=_optional_text)
    password: str | None = field(default=None, repr=False, validator=_optional_text)
    ssl: bool = field(default=False, validator=_is_bool)
    ssl_cafile: str | None = field(default=None, validator=_optional_text)
    ssl_certfile: str | None = field(default=None, validator=_optional_text)
    ssl_keyfile: str | None = field(default=None, validator=_optional_text)
    ssl_insecure: bool = field(default=False, validator=_is_bool)
    heartbeat: int = field(default=60, validator=_int_in(0, 65535))
    connect_timeout: float = field(default=10.0, validator=_positive_number)
    reconnect_interval: float = field(default=1.0, validator=_positive_number)
    connection_name: str | None = field(default=None, validator=_optional_text)
    exchange: str = field(default="dotmac.events", validator=_name(200))
    queue_prefix: str = field(default="dotmac", validator=_name(64))
    queue_type: Literal["quorum", "classic"] = field(default="quorum", validator=_choice("quorum", "classic"))
    prefetch_count: int | None = field(default=None, validator=_optional(_int_in(1, 65535)))
    max_deliveries: int | None = field(default=10, validator=_optional(_int_in(1)))
    publish_timeout: float = field(default=30.0, validator=_positive_number)
    unroutable: Literal["drop", "error"] = field(default="drop", validator=_choice("drop", "error"))

    def __attrs_post_init__(self) -> None:
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not self.ssl and any(v is not None for v in tls_files):
            raise ConfigurationError(
                "RabbitMQConfig: TLS files are set but ssl is off; use an amqps:// URL or ssl=True"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigurationError("RabbitMQConfig: ssl_keyfile needs ssl_certfile")

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (5671 if self.ssl else 5672)

    def resolved_password(self) -> str:
        return self.password or os.environ.get(ENV_PASSWORD) or "guest"

    # -- names on the broker (topics and groups are validated by the core) -----------------
    def queue_name(self, topic: str, suffix: str) -> str:
        """The queue of ``topic`` for a group name or an ``@``-suffix.

        ``:`` cannot occur in topic or group names, so distinct pairs never share a
        queue; names too long for AMQP keep a readable head and a hash of the whole.
        """
        name = f"{self.queue_prefix}:{topic}:{suffix}"
        if len(name.encode()) <= MAX_NAME_BYTES:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        return f"{name[: MAX_NAME_BYTES - len(digest) - 1]}~{digest}"

    def describe(self) -> dict[str, object]:
        """Non-secret facts for logs and diagnostics."""
        return {
            "transport": "rabbitmq",
            "host": self.host,
            "port": self.effective_port,
            "virtual_host": self.virtual_host,
            "username": self.username,
            "ssl": self.ssl,
            "exchange": self.exchange,
            "queue_prefix": self.queue_prefix,
            "queue_type": self.queue_type,
        }


def parse_amqp_url(url: str) -> dict[str, Any]:
    """Config fields from the scheme, netloc and path of an ``amqp://`` or ``amqps://`` URL.

    Query parameters are added by the core. Errors never repeat the URL, which may
    hold a password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError("malformed AMQP URL: bad host or port") from None
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"not an AMQP URL scheme: {scheme!r}")
    fields: dict[str, Any] = {}
    if parts.hostname:
        fields["host"] = parts.hostname
    if port is not None:
        fields["port"] = port
    if parts.username:
        fields["username"] = unquote(parts.username)
    if parts.password is not None:
        fields["password"] = unquote(parts.password)
    # "/" and no path both mean the default vhost "/"; any other vhost is percent-encoded
    # ("%2F" for "/", "staging" for "staging").
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if path:
        if "/" in path:
            raise ConfigurationError("the path of an AMQP URL is one percent-encoded vhost name")
        fields["virtual_host"] = unquote(path)
    if scheme == "amqps":
        fields["ssl"] = True
    return fields
