"""Which Redis errors a user must act on, and what to tell them.

- **authentication / authorization** (``WRONGPASS``, ``NOAUTH``, ``NOPERM``): fail at
  once with :class:`~dotmac.events.errors.AuthenticationError` naming the ACL
  permission that is missing.
- **fatal configuration** (``OOM`` under ``maxmemory`` with ``noeviction``,
  ``READONLY`` from a replica): fail at once with
  :class:`~dotmac.events.errors.ConfigurationError` naming the setting to change.
- a rejected TLS certificate stays a non-retriable ``TransportError``.
- **transient** (lost connection, timeout, ``LOADING``, ``BUSY``, ``MASTERDOWN``,
  ``TRYAGAIN``, ``CLUSTERDOWN``; with Redis Cluster also ``MOVED``/``ASK`` on the
  transport's own connections and the cluster client's errors after a failover):
  retried with backoff by the transport.

:func:`transport_error` maps one redis-py exception to the error to raise.
"""

from __future__ import annotations

import ssl

from redis import exceptions as rexc

from dotmac.events.errors import (
    AuthenticationError,
    ConfigurationError,
    EventBusError,
    TransportError,
    TransportUnavailableError,
)

__all__ = ["is_retriable", "redis_message", "transport_error"]

_TRANSIENT_PREFIXES = ("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY ", "CLUSTERDOWN", "MOVED ", "ASK ")
# Redis Cluster in motion (a failover, a slot migration): redis-py's cluster client
# raises these once its own retries are spent; the next attempt may find the new node.
_CLUSTER_TRANSIENT = (
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.MasterDownError,
    rexc.SlotNotCoveredError,
    rexc.MovedError,
    rexc.AskError,
)


def redis_message(exc: BaseException) -> str:
    """The server's message, without the command text redis-py adds for pipelines
    (it would copy event contents into error messages and logs)."""
    text = str(exc)
    marker = "of pipeline caused error: "
    if marker in text:
        text = text.split(marker, 1)[1].strip("()',\"")
    return text


def tls_rejected(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(current) or "Hostname mismatch" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_auth(exc: BaseException) -> bool:
    if isinstance(exc, (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError)):
        return True
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(("NOPERM", "WRONGPASS", "NOAUTH"))


def _out_of_memory(exc: BaseException) -> bool:
    oom = getattr(rexc, "OutOfMemoryError", None)  # redis-py maps "OOM" replies to it
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, rexc.ResponseError) and redis_message(exc).startswith("OOM")


def _is_config(exc: BaseException) -> bool:
    if isinstance(exc, rexc.ReadOnlyError) or _out_of_memory(exc):
        return True
    text = redis_message(exc)
    return isinstance(exc, rexc.ResponseError) and text.startswith(("OOM", "READONLY"))


def is_retriable(exc: BaseException) -> bool:
    """Whether repeating the operation later may succeed (a lost or busy server)."""
    if _is_auth(exc) or _is_config(exc):
        return False
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError)):
        return not tls_rejected(exc)
    if isinstance(exc, _CLUSTER_TRANSIENT):
        return True
    if isinstance(exc, rexc.ClusterError) or (
        isinstance(exc, rexc.RedisClusterException) and "cannot be connected" in str(exc)
    ):
        # "TTL exhausted" (redirected too often) or no seed node reachable.
        return True
    if isinstance(exc, rexc.ResponseError):
        return redis_message(exc).startswith(_TRANSIENT_PREFIXES)
    return False


def _permission(text: str) -> str:
    # "NOPERM User svc has no permissions to run the 'xadd' command"
    # "NOPERM No permissions to access a key"
    lowered = text.lower()
    if "'" in text and "command" in lowered:
        command = text.split("'")[1]
        return f"+{command.lower()}"
    if "key" in lowered:
        return "~<key_prefix>* (key pattern)"
    if "channel" in lowered:
        return "&* (channels)"
    return "the command's ACL category (+@stream, +@scripting)"


def transport_error(what: str, exc: BaseException, *, username: str | None = None) -> EventBusError:
    """The error to raise for ``exc`` met while doing ``what``."""
    text = redis_message(exc)
    detail = f"{type(exc).__name__}: {text}"
    if tls_rejected(exc):
        return TransportError(
            f"{what}: the server's TLS certificate was rejected ({detail})", retriable=False
        )
    if _is_auth(exc):
        who = f"user {username!r}" if username else "the connecting user"
        if text.startswith("NOPERM") or isinstance(exc, rexc.NoPermissionError):
            permission = _permission(text)
            return AuthenticationError(
                f"{what}: Redis ACL of {who} lacks a permission the bus needs ({text}); grant "
                f"{permission} (the rules the bus needs are in docs/transports/redis.md)",
                permission=permission,
            )
        return AuthenticationError(
            f"{what}: Redis refused the credentials of {who} ({type(exc).__name__}); check username "
            "and password (RedisConfig or the URL's user:password@)",
            permission="authenticate",
        )
    if _out_of_memory(exc):
        return ConfigurationError(
            f"{what}: Redis is out of memory and refuses writes ({text}); raise maxmemory, set "
            "max_stream_length so streams are trimmed, or use a maxmemory-policy that evicts",
            setting="maxmemory",
        )
    if isinstance(exc, rexc.ReadOnlyError) or text.startswith("READONLY"):
        return ConfigurationError(
            f"{what}: the server is a read-only replica ({text}); point the URL at the primary "
            "(or at Sentinel)",
            setting="url",
        )
    if is_retriable(exc):
        return TransportUnavailableError(f"{what}: Redis is unreachable ({detail})")
    return TransportError(f"{what}: {detail}", retriable=False)
