"""Configuration of the NATS JetStream transport, and the ``nats://`` URL."""

from __future__ import annotations

import os
import re
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

from attrs import field, frozen

from dotmac.events.config_fields import FieldChecks
from dotmac.events.errors import ConfigurationError

__all__ = ["ENV_PASSWORD", "ENV_TOKEN", "NatsConfig", "parse_nats_url"]

ENV_PASSWORD = "DOTMAC_EVENTS_NATS_PASSWORD"  # noqa: S105 - a variable name, not a secret
ENV_TOKEN = "DOTMAC_EVENTS_NATS_TOKEN"  # noqa: S105

# JetStream stream names may not hold '.', '*', '>', whitespace or path separators;
# keeping to this alphabet also keeps them valid file names in the server's store.
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Subject tokens of the prefix: no wildcards, no empty tokens.
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
STORAGE_TYPES = ("file", "memory")


_check = FieldChecks("NatsConfig")
_int_at_least = _check.int_in
_optional_secret = _check.optional_text  # never echoes the value: these fields hold secrets
_positive_number = _check.positive_number  # finite: NaN and infinity are refused
_non_negative_number = _check.non_negative_number


def _servers(value: Any) -> str:
    # Python callers may pass a list; URLs and TOML give a comma-separated string.
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            raise ConfigurationError("NatsConfig.servers has an empty entry")
        if "://" not in text:
            text = f"nats://{text}"
        out.append(text)
    return ",".join(out)


def _check_servers(_inst: Any, _attr: Any, value: str) -> None:
    for server in value.split(","):
        try:
            parts = urlsplit(server)
        except ValueError:
            raise ConfigurationError("NatsConfig.servers: an entry is not a valid address") from None
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError(f"NatsConfig.servers: bad port for host {parts.hostname!r}") from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or parts.path not in ("", "/"):
            # Only the host part is echoed: the entry may carry credentials.
            raise ConfigurationError(
                f"NatsConfig.servers entries must be nats://host[:port] or tls://host[:port], "
                f"got one for host {parts.hostname!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(
                "NatsConfig.servers: put credentials in user/password/token, not in servers"
            )
        if port is not None and not 0 < port < 65536:
            raise ConfigurationError(f"NatsConfig.servers: bad port for host {parts.hostname!r}")


def _limit(_inst: Any, attr: Any, value: Any) -> None:
    # JetStream's own spelling of "unlimited" is -1.
    if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
        raise ConfigurationError(
            f"NatsConfig.{attr.name} must be an int >= 1 or -1 (unlimited), got {value!r}"
        )


def _optional_max_deliver(_inst: Any, _attr: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigurationError(f"NatsConfig.max_deliver must be an int >= 1 or None, got {value!r}")


def _optional_text(_inst: Any, attr: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"NatsConfig.{attr.name} must be a non-empty str or None, got {value!r}")


def _stream_name(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not _STREAM_NAME.match(value):
        raise ConfigurationError(f"NatsConfig.stream must be 1-64 characters of [A-Za-z0-9_-], got {value!r}")


def _prefix(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or len(value) > 64 or not _PREFIX.match(value):
        raise ConfigurationError(
            "NatsConfig.subject_prefix must be dot-separated tokens of [A-Za-z0-9_-] "
            f"(no empty tokens, at most 64 characters), got {value!r}"
        )


def _storage(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in STORAGE_TYPES:
        raise ConfigurationError(f"NatsConfig.storage must be 'file' or 'memory', got {value!r}")
    return text


def _name(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ConfigurationError(f"NatsConfig.name must be a non-empty str, got {value!r}")


@frozen
class NatsConfig:
    """``nats://[user:password@]host:4222[,host:4222]?stream=EVENTS&ack_wait=30``.

    Connection:

    - ``servers``: ``"nats://host:4222,nats://host2:4222"`` (or a list; ``tls://`` for TLS).
    - ``user`` / ``password``, or ``token``, or ``creds_file`` (a NATS ``.creds`` file
      with a user JWT and NKey seed). ``password`` and ``token`` may come from
      ``$DOTMAC_EVENTS_NATS_PASSWORD`` / ``$DOTMAC_EVENTS_NATS_TOKEN``. Secrets never
      appear in ``repr()``, logs, ``describe()`` or error messages.
    - ``name``: the client name the server shows.
    - ``connect_timeout``: seconds for one connection attempt; ``request_timeout``:
      seconds a publish or a JetStream API call may wait for the server.
    - ``reconnect_wait``: seconds between reconnection attempts; the client retries
      forever while the bus is open.
    - ``ping_interval``: seconds between pings; a connection that misses two answers
      is taken for dead and replaced.
    - ``tls_ca_file``: CA bundle to verify the servers with (system CAs otherwise);
      ``tls_cert_file`` / ``tls_key_file``: a client certificate; ``tls_hostname``: the
      name to verify when servers are given by address. Any of them turns TLS on.

    Stream (one stream holds every topic of the bus, created on start when
    ``create_stream``):

    - ``stream``: its name; ``subject_prefix``: topic ``orders.created`` is stored
      on subject ``<subject_prefix>.orders.created`` and the stream covers
      ``<subject_prefix>.>``.
    - ``storage`` (``file`` or ``memory``), ``replicas``, ``max_age`` (seconds,
      0 = forever), ``max_msgs`` and ``max_bytes`` (-1 = unlimited).

    Consumers:

    - ``ack_wait``: seconds the server waits for an ack before it redelivers
      (default 30). The transport extends it (``+WPI``) every ``ack_wait / 3`` for
      each delivery the bus still holds, so retry backoff and drain never trigger a
      redelivery; it bounds how long the events of a crashed process wait.
    - ``max_deliver``: dead-letter an event when the server has delivered it this
      many times (default ``None``: only the retry policy decides). The server itself
      never gives up on a message: the bus writes the dead letter.
    - ``max_ack_pending``: un-acked messages the server allows per consumer (shared
      by the members of a group).
    - ``pull_expires``: seconds one pull request waits on the server for messages
      (default 1). A stopping subscription waits for its last request to end, so
      this also bounds how long ``stop()`` takes.
    - ``inactive_threshold``: seconds after which the server deletes the consumer of
      a broadcast subscription whose process vanished.
    """

    servers: str = field(default="nats://localhost:4222", converter=_servers, validator=_check_servers)
    user: str | None = field(default=None, validator=_optional_text)
    password: str | None = field(default=None, repr=False, validator=_optional_secret)
    token: str | None = field(default=None, repr=False, validator=_optional_secret)
    creds_file: str | None = field(default=None, validator=_optional_text)
    name: str = field(default="dotmac-events", validator=_name)
    connect_timeout: float = field(default=5.0, validator=_positive_number)
    request_timeout: float = field(default=10.0, validator=_positive_number)
    reconnect_wait: float = field(default=0.5, validator=_non_negative_number)
    ping_interval: float = field(default=20.0, validator=_positive_number)
    tls_ca_file: str | None = field(default=None, validator=_optional_text)
    tls_cert_file: str | None = field(default=None, validator=_optional_text)
    tls_key_file: str | None = field(default=None, validator=_optional_text)
    tls_hostname: str | None = field(default=None, validator=_optional_text)

    stream: str = field(default="DOTMAC_EVENTS", validator=_stream_name)
    subject_prefix: str = field(default="events", validator=_prefix)
    create_stream: bool = True
    storage: str = field(default="file", converter=_storage)
    replicas: int = field(default=1, validator=_int_at_least(1))
    max_age: float = field(default=0.0, validator=_non_negative_number)
    max_msgs: int = field(default=-1, validator=_limit)
    max_bytes: int = field(default=-1, validator=_limit)

    ack_wait: float = field(default=30.0, validator=_positive_number)
    max_deliver: int | None = field(default=None, validator=_optional_max_deliver)
    max_ack_pending: int = field(default=10_000, validator=_int_at_least(1))
    pull_expires: float = field(default=1.0, validator=_positive_number)
    inactive_threshold: float = field(default=300.0, validator=_positive_number)

    def __attrs_post_init__(self) -> None:
        if self.token is not None and (self.user is not None or self.password is not None):
            raise ConfigurationError("NatsConfig: use either token or user/password, not both")
        if self.password is not None and self.user is None:
            raise ConfigurationError("NatsConfig: password needs user")
        if self.creds_file is not None and (self.token is not None or self.password is not None):
            raise ConfigurationError("NatsConfig: use either creds_file or user/password/token")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigurationError("NatsConfig: tls_cert_file and tls_key_file go together")
        if self.replicas > 5:
            raise ConfigurationError(f"NatsConfig.replicas must be 1-5, got {self.replicas}")

    @property
    def server_list(self) -> list[str]:
        return self.servers.split(",")

    @property
    def tls(self) -> bool:
        return any(
            value is not None for value in (self.tls_ca_file, self.tls_cert_file, self.tls_hostname)
        ) or any(server.startswith("tls://") for server in self.server_list)

    def ssl_context(self) -> ssl.SSLContext:
        """A context that verifies the server's certificate and name."""
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if self.tls_cert_file is not None:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def resolved_password(self) -> str | None:
        return self.password or (os.environ.get(ENV_PASSWORD) if self.user else None) or None

    def resolved_token(self) -> str | None:
        if self.user is not None or self.creds_file is not None:
            return self.token
        return self.token or os.environ.get(ENV_TOKEN) or None


def parse_nats_url(url: str) -> dict[str, Any]:
    """``nats://[user[:password]@]host[:port][,host[:port]]`` -> NatsConfig fields.

    A user name without a password is a token (``nats://s3cr3t@host``), as NATS's own
    clients read it.
    """
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        raise ConfigurationError("nats:// URLs take no path; put settings in the query string")
    netloc = parts.netloc
    fields: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        if sep:
            if user:
                fields["user"] = unquote(user)
            if password:
                fields["password"] = unquote(password)
        elif user:
            fields["token"] = unquote(user)
    if netloc:
        fields["servers"] = ",".join(f"nats://{host.strip()}" for host in netloc.split(","))
    return fields
