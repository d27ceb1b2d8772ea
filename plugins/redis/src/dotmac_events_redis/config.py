"""Configuration of the Redis Streams transport and the parsing of its URLs."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from attrs import field, frozen

from dotmac.events.config_fields import FieldChecks, Validator
from dotmac.events.errors import ConfigurationError

__all__ = ["CLUSTER_SCHEMES", "RedisConfig", "parse_redis_url"]

_PREFIX_RE = re.compile(r"[!-~]+")  # printable ASCII, no spaces
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]+")


_check = FieldChecks("RedisConfig")
_fail = _check.error
_int_in = _check.int_in
_positive_number = _check.positive_number
_optional_positive_number = _check.optional(_check.positive_number)
_optional_text = _check.optional_text  # never echoes the value: it also guards secrets
_host = _check.host
_choice = _check.choice


def _optional_int_at_least(low: int) -> Validator:
    return _check.optional(_check.int_in(low))


def _key_prefix(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 100 or not _PREFIX_RE.fullmatch(value):
        raise _fail("key_prefix", "1 to 100 printable ASCII characters without spaces", value)


def _namespace(_inst: Any, _attr: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > 64 or not _NAMESPACE_RE.fullmatch(value):
        raise _fail("namespace", "1 to 64 ASCII letters, digits, '_' or '-' (or None)", value)


def _seed(item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in host:
        raise _fail("cluster_seeds", "comma-separated host:port pairs", item)
    return host, int(port)


def _seeds(_inst: Any, _attr: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _fail("cluster_seeds", "comma-separated host:port pairs", value)
    for item in value.split(","):
        if item.strip():
            _seed(item)


@frozen
class RedisConfig:
    """``redis://[user[:password]@]host[:port][/db]?option=value`` (``rediss://`` for TLS;
    ``redis+cluster://host:port[,host:port...]/`` for Redis Cluster).

    Connection
        ``host``, ``port``, ``db``; ``username`` and ``password`` for AUTH (an ACL user
        when ``username`` is set). The password never appears in reprs, logs or errors.
        ``socket_timeout`` and ``socket_connect_timeout`` in seconds;
        ``max_connections`` bounds the shared pool (each subscription also holds one
        connection of its own for blocking reads); ``client_name`` is shown by
        ``CLIENT LIST``.

    TLS
        ``ssl`` (implied by ``rediss://``), ``ssl_ca_certs`` (CA bundle to trust),
        ``ssl_certfile``/``ssl_keyfile``/``ssl_password`` (client certificate).
        Certificates and host names are always checked: ``ssl_cert_reqs`` other than
        ``"required"`` or ``ssl_check_hostname=False`` are refused unless
        ``ssl_insecure=True`` says so explicitly, and then every start logs a warning.

    Keys
        Each topic is one stream at ``{key_prefix}{topic}``, or
        ``{key_prefix}{namespace}:{topic}`` with a ``namespace`` (a tenant or an
        environment). Topic names cannot contain ``:``, so among buses that share one
        ``key_prefix`` one namespace can never address another's streams. The
        ``key_prefix`` is deployment configuration, not a tenant boundary: enforce one
        with a Redis ACL user per tenant (docs/transports/redis.md).

    Retention
        ``max_stream_length`` caps each stream (``None``: no cap). ``trim_policy``
        ``"safe"`` (default) never trims an entry that a consumer group has not
        acknowledged or not yet read: the stream may grow past the cap, which is
        counted and logged. ``"maxlen"`` always trims to the cap and counts the
        entries it removed unread. Dead-letter streams are trimmed only when
        ``dead_letter_max_length`` is set (same policy, their own cap); by default
        they keep every dead letter.

    Consuming
        ``prefetch_count`` (optional) caps every subscription's un-acknowledged
        entries on this bus (``ConsumerOptions.prefetch_count`` sets it per
        subscription). ``block_timeout`` is the longest blocking read in seconds.
        Entries of a consumer idle for ``min_idle_time`` seconds are reclaimed by a
        live member, checked every ``reclaim_interval`` seconds; a live consumer
        renews its in-flight entries so long handlers keep them. ``max_deliveries``
        (default 10) is the dead-letter threshold used when
        ``ConsumerOptions.max_deliveries`` is not set (``None``: unlimited): an entry
        handed out more often than that, because its consumer keeps dying on it, is
        dead-lettered with reason ``max_deliveries``. Deliveries given back by a
        graceful stop do not count. Consumers without pending entries that have
        been idle for ``consumer_idle_timeout`` seconds are removed from their group
        (``None``: never).

    Redis Cluster
        ``cluster`` (implied by ``redis+cluster://`` and ``rediss+cluster://``) talks to
        a Redis Cluster through redis-py's cluster client; ``host``/``port`` and
        ``cluster_seeds`` (more ``host:port`` pairs, comma-separated) are the seed
        nodes. Each stream key is then one hash tag, ``{<key_prefix>[<namespace>:]<topic>}``,
        so every script touches one slot (docs/transports/redis.md, "Redis Cluster").

    Replication
        ``wait_replicas`` (default 0: off) makes every publish wait, after Redis took
        it, until that many replicas have it too (``WAIT``), for up to
        ``wait_timeout_ms``; a publish fewer replicas confirmed in time fails with a
        retriable :class:`~dotmac.events.errors.PublishError` (the entries were
        written to the primary, so a retry may store them twice).

    Resilience
        ``publish_timeout`` and ``ack_timeout``: how long a publish or an
        acknowledgement keeps retrying while Redis is unreachable before it fails.
        ``reconnect_backoff_max`` caps the exponential backoff between reconnects.
        ``reply_ttl`` (seconds) expires the reply stream of a bus that went away.
    """

    host: str = field(default="localhost", validator=_host)
    port: int = field(default=6379, validator=_int_in(1, 65535))
    db: int = field(default=0, validator=_int_in(0))
    username: str | None = field(default=None, validator=_optional_text)
    password: str | None = field(default=None, repr=False, validator=_optional_text)
    ssl: bool = False
    ssl_ca_certs: str | None = field(default=None, validator=_optional_text)
    ssl_certfile: str | None = field(default=None, validator=_optional_text)
    ssl_keyfile: str | None = field(default=None, validator=_optional_text)
    ssl_password: str | None = field(default=None, repr=False, validator=_optional_text)
    ssl_cert_reqs: Literal["required", "optional", "none"] = field(
        default="required", validator=_choice("required", "optional", "none")
    )
    ssl_check_hostname: bool = True
    ssl_insecure: bool = False
    socket_timeout: float = field(default=5.0, validator=_positive_number)
    socket_connect_timeout: float = field(default=5.0, validator=_positive_number)
    max_connections: int = field(default=50, validator=_int_in(2))
    client_name: str | None = field(default=None, validator=_optional_text)
    key_prefix: str = field(default="dotmac:events:", validator=_key_prefix)
    namespace: str | None = field(default=None, validator=_namespace)
    max_stream_length: int | None = field(default=100_000, validator=_optional_int_at_least(1))
    trim_policy: Literal["safe", "maxlen"] = field(default="safe", validator=_choice("safe", "maxlen"))
    dead_letter_max_length: int | None = field(default=None, validator=_optional_int_at_least(1))
    prefetch_count: int | None = field(default=None, validator=_optional_int_at_least(1))
    block_timeout: float = field(default=2.0, validator=_positive_number)
    min_idle_time: float = field(default=30.0, validator=_positive_number)
    reclaim_interval: float = field(default=5.0, validator=_positive_number)
    max_deliveries: int | None = field(default=10, validator=_optional_int_at_least(1))
    consumer_idle_timeout: float | None = field(default=3600.0, validator=_optional_positive_number)
    publish_timeout: float = field(default=30.0, validator=_positive_number)
    ack_timeout: float = field(default=30.0, validator=_positive_number)
    reconnect_backoff_max: float = field(default=5.0, validator=_positive_number)
    reply_ttl: float = field(default=3600.0, validator=_positive_number)
    cluster: bool = False
    cluster_seeds: str | None = field(default=None, validator=_seeds)
    wait_replicas: int = field(default=0, validator=_int_in(0, 64))
    wait_timeout_ms: int = field(default=1000, validator=_int_in(1))

    def __attrs_post_init__(self) -> None:
        if self.cluster:
            if self.db != 0:
                raise ConfigurationError(
                    "RedisConfig.db must be 0 with cluster=True (Redis Cluster has one database)"
                )
            if self.ssl_password is not None:
                raise ConfigurationError(
                    "RedisConfig.ssl_password is not supported with cluster=True "
                    "(redis-py's cluster client cannot load an encrypted key); use an unencrypted key"
                )
            if "{" in self.key_prefix or "}" in self.key_prefix:
                raise ConfigurationError(
                    "RedisConfig.key_prefix cannot contain '{' or '}' with cluster=True: "
                    "the transport puts each stream key in a hash tag of its own"
                )
        elif self.cluster_seeds is not None:
            raise ConfigurationError(
                "RedisConfig.cluster_seeds is set but cluster is off; "
                "use a redis+cluster:// URL or cluster=True"
            )
        tls_files = (self.ssl_ca_certs, self.ssl_certfile, self.ssl_keyfile, self.ssl_password)
        if not self.ssl and any(v is not None for v in tls_files):
            raise ConfigurationError(
                "RedisConfig: TLS files are set but ssl is off; use a rediss:// URL or ssl=True"
            )
        if self.ssl and not self.ssl_insecure:
            if self.ssl_cert_reqs != "required":
                raise ConfigurationError(
                    f"RedisConfig.ssl_cert_reqs={self.ssl_cert_reqs!r} turns certificate checks off; "
                    "set ssl_insecure=True as well if that is really intended"
                )
            if not self.ssl_check_hostname:
                raise ConfigurationError(
                    "RedisConfig.ssl_check_hostname=False turns host name checks off; "
                    "set ssl_insecure=True as well if that is really intended"
                )

    def stream_key(self, topic: str) -> str:
        """The Redis key of ``topic``'s stream (topics are validated by the core).

        With ``cluster`` the whole key is one hash tag: the stream's slot depends on
        the key alone, and whatever one script touches (one stream) is in one slot.
        """
        name = topic if self.namespace is None else f"{self.namespace}:{topic}"
        key = f"{self.key_prefix}{name}"
        return f"{{{key}}}" if self.cluster else key

    def seeds(self) -> list[tuple[str, int]]:
        """The seed nodes of a cluster: ``host``/``port`` first, then ``cluster_seeds``."""
        nodes = [(self.host, self.port)]
        for item in (self.cluster_seeds or "").split(","):
            if item.strip():
                nodes.append(_seed(item))
        return nodes

    def describe(self) -> dict[str, object]:
        """Non-secret facts for logs and diagnostics."""
        return {
            "transport": "redis",
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "ssl": self.ssl,
            "key_prefix": self.key_prefix,
            "namespace": self.namespace,
            "cluster": self.cluster,
            "cluster_seeds": self.cluster_seeds,
            "wait_replicas": self.wait_replicas,
        }


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def parse_redis_url(url: str) -> dict[str, Any]:
    """Config fields from the scheme, netloc and path of a ``redis://`` or ``rediss://`` URL
    (``redis+cluster://`` and ``rediss+cluster://`` take several ``host:port`` seeds).

    Query parameters are added by the core. Errors never repeat the URL, which may
    hold a password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigurationError("malformed Redis URL: bad host or port") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", *CLUSTER_SCHEMES):
        raise ConfigurationError(f"not a Redis URL scheme: {scheme!r}")
    fields: dict[str, Any] = {}
    hosts = parts.netloc.rpartition("@")[2]
    if scheme in CLUSTER_SCHEMES:
        fields["cluster"] = True
        first, _sep, rest = hosts.partition(",")
        if rest.strip():
            fields["cluster_seeds"] = rest
        # The first seed goes through urlsplit like a single-node URL.
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{first}" if userinfo else first
        parts = urlsplit(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    elif "," in hosts:
        raise ConfigurationError("several hosts in a Redis URL need the redis+cluster:// scheme")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError("malformed Redis URL: bad host or port") from None
    if parts.hostname:
        fields["host"] = parts.hostname
    if port is not None:
        fields["port"] = port
    if parts.username:
        fields["username"] = unquote(parts.username)
    if parts.password is not None:
        fields["password"] = unquote(parts.password)
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ConfigurationError(f"the path of a Redis URL is the database number, got {path!r}")
        fields["db"] = int(path)
    if scheme.startswith("rediss"):
        fields["ssl"] = True
    return fields
