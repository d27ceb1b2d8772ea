"""Hook specifications: the only way the core learns about plugins.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names
are the hooks below, published through the entry-point group ``dotmac_events``::

    # pyproject.toml of dotmac-events-foo
    [project.entry-points.dotmac_events]
    foo = "dotmac_events_foo"

    # dotmac_events_foo/__init__.py
    from dotmac.events import hookimpl

    @hookimpl
    def dotmac_events_register_transports(register):
        register.add_transport(TransportSpec(name="foo", schemes=("foo",), ...))

Hooks are always called with keyword arguments and never awaited: they return
classes, factories, context managers or nothing; all I/O lives in the objects they
create. Observer hooks (``dotmac_events_on_*`` and the ``*_context`` hooks) are
resolved once when a bus starts, so a bus without observers pays nothing per event.
An observer that raises never changes what happens to an event: the bus logs the
first failure of each hook, counts every one (``dotmac_events_on_error`` with
``where="observer"``) and carries on. A plugin implements only the hooks it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

import pluggy
from attrs import frozen

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Sequence

    from .event import Event
    from .registry import Registry
    from .transport import Message, Transport

__all__ = ["PROJECT_NAME", "ConsumeInfo", "ConsumeOutcome", "PublishInfo", "PublishOutcome", "hookspec"]

PROJECT_NAME = "dotmac_events"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

PublishOutcome = Literal["success", "error"]
ConsumeOutcome = Literal["success", "dead_letter", "released", "retry"]
ErrorPlace = Literal["decode", "ack", "dead_letter", "transport", "reply", "observer"]


@frozen
class PublishInfo:
    """Context of a publish, passed to observer hooks.

    ``server_address`` and ``server_port`` name the broker the transport was given
    (its first bootstrap server on Kafka), ``None`` when it has none (memory).
    """

    transport: str
    topic: str
    batch_size: int = 1
    server_address: str | None = None
    server_port: int | None = None


@frozen
class ConsumeInfo:
    """Context of a delivery, passed to observer hooks (``server_*`` as in :class:`PublishInfo`)."""

    transport: str
    topic: str
    group: str | None
    consumer: str
    delivery_count: int = 1
    position: str | None = None
    server_address: str | None = None
    server_port: int | None = None


@hookspec
def dotmac_events_register_transports(register: Registry) -> None:
    """Register the transports this plugin provides.

    Called once per plugin manager, when the first bus is created. Call
    ``register.add_transport(TransportSpec(...))`` once per transport: its ``name``,
    the URL ``schemes`` it serves (``("redis", "rediss")``), the attrs ``config_class``
    that ``create_bus`` structures URL query parameters and dicts into (unknown keys
    are rejected), the ``factory(config) -> Transport`` that builds an un-started
    transport, an optional ``parse_url(url) -> dict`` giving config fields from the
    URL's netloc and path, and the ``capabilities`` flags. A scheme registered twice
    raises :class:`~dotmac.events.errors.ConfigurationError` naming both plugins.
    Return value: ignored.
    """


@hookspec
def dotmac_events_register_codecs(register: Registry) -> None:
    """Register payload codecs.

    Call ``register.add_codec(CodecSpec(name=..., content_type=..., factory=...))``.
    ``factory(**options) -> Codec`` builds a :class:`~dotmac.events.codec.Codec`;
    it is called with no options to decode incoming messages whose ``content-type``
    matches, and with the user's options when a bus selects the codec by name
    (``create_bus(url, codec="avro", codec_options={...})``). The builtin JSON codec
    registers through this hook. Return value: ignored.
    """


@hookspec
def dotmac_events_register_retry_policies(register: Registry) -> None:
    """Register named retry policies.

    Call ``register.add_retry_policy(name, factory)`` where
    ``factory(options: ConsumerOptions) -> RetryPolicy`` builds a policy (an object
    with ``max_retries`` and a pure ``compute(attempt) -> seconds``) from a
    subscription's options. ``ConsumerOptions(retry_policy=name)`` selects it.
    The builtins ``none``, ``fixed`` and ``exponential`` register the same way.
    Return value: ignored.
    """


@hookspec
def dotmac_events_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add subcommands to the ``dotmac-events`` CLI.

    Called once each time the CLI builds its argument parser, after the builtin
    commands were added, with the ``subparsers`` object of the top-level parser.
    Call ``subparsers.add_parser(name, help=...)`` for each command (give it its own
    ``add_subparsers()`` for nested commands such as ``dotmac-events outbox relay``)
    and ``set_defaults(func=...)`` on the parser that runs it, where
    ``func(args, out) -> int`` receives the parsed :class:`argparse.Namespace` and
    the text stream to write results to, and returns the exit code. ``func`` may be
    an ``async def`` returning an int; the CLI runs it with :func:`asyncio.run`.
    An :class:`~dotmac.events.errors.EventBusError` raised by ``func`` is printed
    and exits with 2.

    Import heavy dependencies inside ``func``, not at module level, so that
    ``dotmac-events --help`` stays fast. An implementation that raises (argparse
    raises for a command name already taken, on Python 3.11 and later) is logged
    with the plugin's name and skipped; the other commands keep working.
    Return value: ignored.
    """


@hookspec
def dotmac_events_publish_context(
    event: Event, info: PublishInfo
) -> AbstractContextManager[Mapping[str, str] | None] | None:
    """Wrap one publish (tracing). Optional; return ``None`` to stay out of the way.

    Called for every event just before it is encoded. Return a context manager:
    the bus enters it before encoding, merges the mapping its ``__enter__`` returns
    into the event's headers (e.g. ``traceparent``), sends, then exits it with the
    exception of a failed send, if any. Must not raise.
    """


@hookspec
def dotmac_events_consume_context(event: Event, info: ConsumeInfo) -> AbstractContextManager[Any] | None:
    """Wrap the handling of one delivery, all its attempts included (tracing).

    Called after the event is decoded and before the first handler call; the
    returned context manager stays entered during every attempt, retry waits and
    dead-lettering, so spans started by the handler become its children. Its
    ``__exit__`` receives the exception only if handling was cancelled. Must not raise.
    """


@hookspec
def dotmac_events_on_publish(
    event: Event, info: PublishInfo, duration: float, outcome: PublishOutcome, error: BaseException | None
) -> None:
    """After a publish: ``outcome`` is ``"success"`` or ``"error"``; ``duration`` in seconds.

    For ``publish_many`` it is called once per event with the batch's duration.
    """


@hookspec
def dotmac_events_on_consume(
    event: Event,
    info: ConsumeInfo,
    duration: float,
    outcome: ConsumeOutcome,
    error: BaseException | None,
    attempts: int,
) -> None:
    """After a delivery was handled: ``outcome`` is ``"success"``, ``"dead_letter"``,
    ``"released"`` (shutdown left it for redelivery) or ``"retry"`` (moved to a retry
    topic, ``ConsumerOptions.retry_topics``). ``duration`` covers every attempt.
    """


@hookspec
def dotmac_events_on_retry(
    event: Event, info: ConsumeInfo, attempt: int, delay: float, error: BaseException
) -> None:
    """A handler call failed and will be retried after ``delay`` seconds.

    ``attempt`` is the number of the call that failed (1 for the first).
    """


@hookspec
def dotmac_events_on_dead_letter(
    event: Event | None,
    message: Message,
    info: ConsumeInfo,
    dlq_topic: str,
    reason: str,
    error: BaseException | None,
    attempts: int,
) -> None:
    """A message was written to ``dlq_topic``. ``event`` is ``None`` if it could not be
    decoded; ``message`` is the raw message as received."""


@hookspec
def dotmac_events_on_error(where: ErrorPlace, error: BaseException, info: Mapping[str, Any]) -> None:
    """An error outside a handler: ``where`` is ``"decode"``, ``"ack"``, ``"dead_letter"``,
    ``"transport"``, ``"reply"`` or ``"observer"`` (another observer hook raised).

    ``info`` is a plain mapping with the keys that are known: ``topic``, ``group``,
    and for ``"observer"`` the failing ``hook`` name.
    """


@hookspec
def dotmac_events_doctor_checks(
    transport: Transport,
) -> Sequence[Callable[[Transport, Any], Awaitable[Sequence[Any]]]] | None:
    """Contribute checks to ``dotmac-events doctor`` for a transport of this plugin.

    Called once per ``doctor`` run, after the core connected ``transport`` (started)
    and ran its generic checks (connect, group join, publish -> consume -> ack round
    trip, dead-letter write). Return ``None`` unless ``transport`` is one of yours
    (``isinstance(transport, MyTransport)``); otherwise return a sequence of async
    callables ``check(transport, ctx) -> Sequence[CheckResult]``, run in order.
    ``ctx`` is a :class:`~dotmac.events.doctor.DoctorContext`: ``ctx.topic`` and
    ``ctx.group`` are the topic and group the round trip used (the group is always
    a scratch group, so an application's group never loses events to doctor),
    ``ctx.acked`` tells whether its event was handled and acked (a check may
    confirm that on the broker, e.g. the group's committed offsets), and
    ``ctx.scratch_topics`` lists the topics the core made up, which a check of
    yours should delete (with their ``<topic>.dlq``) from the broker; when
    ``ctx.scratch`` is ``False`` the round trip ran on the user's topic and the
    scratch group should be removed from it where the broker allows. A
    :class:`~dotmac.events.doctor.CheckResult` has a ``name``, ``ok`` (``True``,
    ``False``, or ``None`` for a plain fact such as a broker limit), a ``detail``
    and, when ``ok`` is ``False``, a ``fix`` telling the user what to change. Report
    limits the bus depends on (record size, session timeout bounds, retention,
    trimming) and permissions. Never put credentials in a result. An exception a
    check raises becomes one failed result named after the check.
    """
