"""The error tree of dotmac-events.

Every exception the library raises on purpose derives from :class:`EventBusError`.
Leaves are named for what went wrong, so callers can catch exactly what they handle.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BusStateError",
    "CodecError",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "EventBusError",
    "EventBusTimeoutError",
    "HandlerTimeoutError",
    "HeaderValidationError",
    "InvalidTenantError",
    "InvalidTopicError",
    "MessageTooLargeError",
    "NonRetryableError",
    "PayloadValidationError",
    "PluginNotFoundError",
    "PublishError",
    "PartialPublishError",
    "QueueFullError",
    "RemoteHandlerError",
    "RequestTimeoutError",
    "SchemaValidationError",
    "TransportError",
    "TransportUnavailableError",
    "UnsupportedOperationError",
    "ValidationError",
]


class EventBusError(Exception):
    """Root of every error raised by dotmac-events and its plugins."""


class ConfigurationError(EventBusError, ValueError):
    """A bus, transport or consumer was configured with a wrong key or value.

    Raised at construction for values the library can check itself, and by
    ``start()``, ``subscribe()`` or ``publish()`` when the broker refuses a setting
    (a session timeout outside the broker's bounds, a record above its size limit, a
    read-only replica). ``setting`` names the setting to change when one is known
    (``"session_timeout_ms"``, ``"maxmemory-policy"``); repeating the call without
    changing it fails the same way.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class PluginNotFoundError(ConfigurationError, ImportError):
    """A transport, codec or retry policy was asked for but no installed plugin provides it.

    The message names the command that installs the missing plugin.
    """

    def __init__(self, what: str, *, extra: str | None = None, known: tuple[str, ...] = ()) -> None:
        self.what = what
        self.extra = extra
        parts = [f"no installed plugin provides {what}"]
        if extra:
            parts.append(f'install it with: pip install "dotmac-events[{extra}]"')
        if known:
            parts.append("available: " + ", ".join(sorted(known)))
        super().__init__("; ".join(parts))


class ValidationError(EventBusError, ValueError):
    """An event or one of its fields is invalid. Raised before anything is sent.

    ``field`` names the offending field (``"topic"``, ``"headers['x-a']"``, ...).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidTopicError(ValidationError):
    """A topic name is empty, too long or uses characters outside ``[A-Za-z0-9._-]``."""


class HeaderValidationError(ValidationError):
    """A header name is not a token, a value holds CR/LF/NUL, or the headers are too big."""


class InvalidTenantError(ValidationError):
    """A tenant id is malformed in a way that could address another tenant's resources."""


class PayloadValidationError(ValidationError):
    """The payload is not a ``dict`` with string keys."""


class SchemaValidationError(ValidationError):
    """The payload does not satisfy the schema registered for its topic."""


class MessageTooLargeError(ValidationError):
    """The encoded message exceeds the configured maximum size."""


class CodecError(EventBusError):
    """A codec could not encode or decode a payload."""


class EncodeError(CodecError, ValueError):
    """A payload could not be encoded. Raised at publish time, before anything is sent."""


class DecodeError(CodecError):
    """Bytes read from a transport could not be decoded into an event."""


class TransportError(EventBusError):
    """A transport operation failed.

    ``retriable`` tells whether repeating the same operation may succeed (a broken
    connection, a broker that is restarting) or not (an authorisation failure).
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class AuthenticationError(TransportError):
    """The broker refused the credentials, or the user lacks a permission the bus needs.

    Never retriable: a wrong password or a missing ACL grant does not fix itself.
    ``permission`` names what is missing when the broker says it (``"READ on group
    billing"``, ``"+xadd"``); the message names it too, and never holds a secret.
    """

    retriable = False

    def __init__(self, message: str, *, permission: str | None = None) -> None:
        super().__init__(message, retriable=False)
        self.permission = permission


class TransportUnavailableError(TransportError):
    """The broker cannot be reached. Usually retriable."""

    retriable = True


class PublishError(TransportError):
    """The transport did not confirm that an event was stored."""


class PartialPublishError(PublishError):
    """A batch was only partly stored: the transport could not make it all-or-nothing.

    ``sent`` holds the event ids that were stored, ``unsent`` those that were not, in
    batch order; retry only ``unsent`` to avoid duplicates. ``retriable`` is that of
    the error that stopped the batch, which is chained as ``__cause__``.
    """

    def __init__(
        self, message: str, *, sent: tuple[str, ...], unsent: tuple[str, ...], retriable: bool | None = None
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.sent = sent
        self.unsent = unsent


class QueueFullError(TransportError):
    """A bounded queue is full and the transport is configured to fail rather than wait."""

    retriable = True


class UnsupportedOperationError(EventBusError):
    """The transport has no capability for the requested operation."""


class BusStateError(EventBusError):
    """The bus is used before ``start()`` or after ``close()``."""


class EventBusTimeoutError(EventBusError, TimeoutError):
    """An operation did not finish within its timeout."""


class RequestTimeoutError(EventBusTimeoutError):
    """No reply arrived for a request within its timeout."""


class HandlerTimeoutError(EventBusTimeoutError):
    """A handler call did not finish within ``ConsumerOptions.handler_timeout``.

    Raised by the runner in place of the handler's result; it counts as a failed
    call (retried, then dead-lettered) like any other exception.
    """


class RemoteHandlerError(EventBusError):
    """The handler that received a request failed, or returned something that cannot
    be sent as a reply. ``error_type`` and the message come from the responder."""

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type


class NonRetryableError(EventBusError):
    """Raise from a handler to skip the remaining retries and dead-letter the event now."""
