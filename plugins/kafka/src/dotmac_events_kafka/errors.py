"""Which Kafka errors a user must act on, and what to tell them.

aiokafka reports a broker's refusal as an exception class per error code. Three kinds
matter to a caller:

- **fatal configuration**: the broker refuses a setting (a session timeout outside its
  bounds, a record above its size limit, a topic it will not create). Repeating the
  call cannot help, so it fails at once with a
  :class:`~dotmac.events.errors.ConfigurationError` naming the setting.
- **authentication / authorization**: wrong credentials or a missing ACL grant; fails
  at once with an :class:`~dotmac.events.errors.AuthenticationError` naming the
  permission.
- **transient**: everything else the client marks ``retriable`` (a broker restarting,
  a leader moving); the transport keeps retrying with backoff as before.

:func:`classify` maps one exception; it returns ``None`` for what is not fatal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import errors as kerr

from dotmac.events.errors import AuthenticationError, ConfigurationError, EventBusError

__all__ = ["FATAL_CONFIGURATION", "FATAL_PERMISSION", "classify", "is_fatal"]

_AUTH_FAILED = (
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.IllegalSaslStateError,
    kerr.UnsupportedSaslMechanismError,
    kerr.AuthenticationMethodNotSupported,
)
FATAL_PERMISSION: tuple[type[BaseException], ...] = (
    *_AUTH_FAILED,
    kerr.TopicAuthorizationFailedError,
    kerr.GroupAuthorizationFailedError,
    kerr.ClusterAuthorizationFailedError,
    kerr.TransactionalIdAuthorizationFailed,
)
FATAL_CONFIGURATION: tuple[type[BaseException], ...] = (
    kerr.InvalidSessionTimeoutError,
    kerr.MessageSizeTooLargeError,
    kerr.RecordListTooLargeError,
    kerr.InvalidGroupIdError,
    kerr.InconsistentGroupProtocolError,
    kerr.InvalidTopicError,
    kerr.InvalidRequiredAcksError,
    kerr.UnsupportedForMessageFormatError,
    kerr.PolicyViolationError,
    kerr.InvalidTransactionTimeout,
    kerr.ProducerFenced,
)


def is_fatal(exc: BaseException) -> bool:
    """Whether retrying the call that raised ``exc`` cannot succeed without a change."""
    return isinstance(exc, (*FATAL_PERMISSION, *FATAL_CONFIGURATION))


def _range(low: object, high: object) -> str:
    if low is None and high is None:
        return " (the broker does not report its bounds; Apache Kafka's defaults are 6000..1800000 ms)"
    return f" (the broker allows {low if low is not None else '?'}..{high if high is not None else '?'} ms)"


def classify(
    exc: BaseException,
    *,
    what: str,
    session_timeout_ms: int | None = None,
    max_request_size: int | None = None,
    group: str | None = None,
    topics: Sequence[str] = (),
    username: str | None = None,
    broker_limits: Mapping[str, str] | None = None,
) -> EventBusError | None:
    """The error to raise for ``exc`` met while doing ``what``, or ``None`` if it is
    transient (or not a broker refusal at all).

    ``broker_limits`` holds broker settings read with DescribeConfigs, when the caller
    could read them (``group.min.session.timeout.ms``, ``message.max.bytes``, ...);
    they turn "refused" into "refused, the broker allows 6000..300000 ms".
    """
    limits = broker_limits or {}
    topic_list = ", ".join(repr(t) for t in topics) or "the topic"
    name = type(exc).__name__
    if isinstance(exc, _AUTH_FAILED):
        who = f" for user {username!r}" if username else ""
        return AuthenticationError(
            f"{what}: the broker refused the SASL credentials{who} ({name}); check sasl_mechanism, "
            "sasl_username and sasl_password (or $DOTMAC_EVENTS_KAFKA_SASL_USERNAME / "
            "$DOTMAC_EVENTS_KAFKA_SASL_PASSWORD)",
            permission="authenticate",
        )
    if isinstance(exc, kerr.GroupAuthorizationFailedError):
        permission = f"READ on group {group!r}" if group else "READ on the consumer group"
        return AuthenticationError(
            f"{what}: not authorized to join the consumer group ({name}); grant {permission}",
            permission=permission,
        )
    if isinstance(exc, kerr.TopicAuthorizationFailedError):
        permission = f"WRITE/READ/DESCRIBE on topic {topic_list}"
        return AuthenticationError(
            f"{what}: not authorized for {topic_list} ({name}); grant {permission}", permission=permission
        )
    if isinstance(exc, kerr.ClusterAuthorizationFailedError):
        permission = "IDEMPOTENT_WRITE on the cluster"
        return AuthenticationError(
            f"{what}: not authorized on the cluster ({name}); grant {permission}, or set "
            "enable_idempotence=False",
            permission=permission,
        )
    if isinstance(exc, kerr.TransactionalIdAuthorizationFailed):
        permission = "WRITE on the transactional id"
        return AuthenticationError(
            f"{what}: not authorized to use the transactional id ({name}); grant {permission}, or "
            "set transactional_id=None",
            permission=permission,
        )
    if isinstance(exc, kerr.InvalidSessionTimeoutError):
        low = limits.get("group.min.session.timeout.ms")
        high = limits.get("group.max.session.timeout.ms")
        return ConfigurationError(
            f"{what}: the broker refused session_timeout_ms={session_timeout_ms}{_range(low, high)}; "
            "set KafkaConfig.session_timeout_ms within the broker's group.min.session.timeout.ms "
            "and group.max.session.timeout.ms",
            setting="session_timeout_ms",
        )
    if isinstance(exc, (kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError)):
        broker = limits.get("max.message.bytes") or limits.get("message.max.bytes")
        if broker is not None:
            limit = f"the broker accepts at most {broker} bytes per record batch on {topic_list}"
        else:
            limit = f"the broker's max.message.bytes of {topic_list} is lower"
        ours = f" than max_request_size={max_request_size}" if max_request_size is not None else ""
        return ConfigurationError(
            f"{what}: record too large ({name}); {limit}{ours}. Lower max_request_size and "
            "max_message_bytes to the broker's limit, or raise the topic's max.message.bytes",
            setting="max_request_size",
        )
    if isinstance(exc, (kerr.InvalidGroupIdError, kerr.InconsistentGroupProtocolError)):
        return ConfigurationError(
            f"{what}: the broker refused consumer group {group!r} ({name})", setting="group"
        )
    if isinstance(exc, kerr.ProducerFenced):
        return ConfigurationError(
            f"{what}: the broker fenced this transactional producer ({name}): another one started "
            "with the same transactional_id, or a transaction outlived transaction_timeout_ms; give "
            "each running process its own transactional_id",
            setting="transactional_id",
        )
    if isinstance(exc, kerr.InvalidTransactionTimeout):
        return ConfigurationError(
            f"{what}: the broker refused the transaction timeout ({name}); it must not exceed the "
            "broker's transaction.max.timeout.ms",
            setting="transaction_timeout_ms",
        )
    if isinstance(exc, kerr.InvalidRequiredAcksError):
        return ConfigurationError(f"{what}: the broker refused the acks setting ({name})", setting="acks")
    if isinstance(exc, FATAL_CONFIGURATION):
        return ConfigurationError(f"{what}: the broker refused the request ({name}: {exc})")
    return None


def unknown_topic(what: str, topics: Sequence[str]) -> ConfigurationError:
    """A topic does not exist and the transport was told not to create it."""
    names = ", ".join(repr(t) for t in topics)
    return ConfigurationError(
        f"{what}: topic {names} does not exist and auto_create_topics is off (and the broker did "
        "not create it); create the topic, or set auto_create_topics=True",
        setting="auto_create_topics",
    )
