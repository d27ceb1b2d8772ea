"""``dotmac-events doctor``: diagnose a bus URL with checks a user can act on.

The core runs the generic checks (connect and authenticate, a publish -> consume ->
ack round trip through a consumer group on a scratch topic, a dead-letter write);
each transport plugin adds its own through the ``dotmac_events_doctor_checks`` hook
(broker limits, permissions, cleanup of the scratch topics).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from attrs import Factory, define, frozen

from .bus import EventBus
from .config import create_bus, redact_url
from .errors import AuthenticationError, ConfigurationError, EventBusError, TransportUnavailableError
from .event import Event, EventMetadata
from .plugins import get_plugin_manager, hookimpl
from .transport import Transport

__all__ = ["PROBE_TYPE", "CheckResult", "DoctorCheck", "DoctorContext", "run_doctor"]

log = logging.getLogger(__name__)

PROBE_TYPE = "dotmac.doctor.probe"
"""``metadata.event_type`` of the events doctor publishes."""


@frozen
class CheckResult:
    """One line of the diagnosis. ``ok`` is ``None`` for a fact that is not a verdict
    (a broker limit); ``fix`` says what to change when ``ok`` is ``False``."""

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None


@define
class DoctorContext:
    """What the checks share.

    ``topic`` and ``group`` are those of the round trip: ``topic`` is the user's
    ``--topic`` or a scratch topic, ``group`` always a scratch group, so that doctor
    never takes (and acks) events from a group an application consumes with.
    ``scratch_topics`` lists topics the core made up (a transport's checks should
    delete them and their ``.dlq`` topics); ``scratch`` is ``True`` when ``topic`` is
    one of them (otherwise the scratch group sits on the user's topic and should be
    removed from it where the broker allows). ``acked`` tells whether the round
    trip's event was handled and acked; ``ack_errors`` holds errors of failed acks.
    """

    bus: EventBus
    topic: str
    group: str
    scratch: bool
    timeout: float
    ack_errors: list[BaseException] = Factory(list)
    acked: bool = False
    scratch_topics: list[str] = Factory(list)
    user_group: str | None = None


DoctorCheck = Callable[[Transport, DoctorContext], Awaitable[Sequence[CheckResult]]]


def _fix_for(exc: BaseException) -> str:
    if isinstance(exc, AuthenticationError):
        return (
            f"grant {exc.permission}"
            if exc.permission not in (None, "authenticate")
            else "fix the credentials"
        )
    if isinstance(exc, ConfigurationError):
        return f"change {exc.setting}" if exc.setting else "fix the configuration"
    if isinstance(exc, TransportUnavailableError):
        return "check host, port, TLS and that the broker runs"
    return "see the error"


def _failed(name: str, exc: BaseException) -> CheckResult:
    detail = str(exc) if isinstance(exc, EventBusError) else f"{type(exc).__name__}: {exc}"
    return CheckResult(name, False, detail, _fix_for(exc))


class _AckErrors:
    """A bus observer keeping the errors of failed acks, to name their cause."""

    def __init__(self, into: list[BaseException]) -> None:
        self._into = into

    @hookimpl
    def dotmac_events_on_error(self, where: str, error: BaseException, info: Mapping[str, Any]) -> None:
        if where == "ack":
            self._into.append(error)


async def _round_trip(ctx: DoctorContext) -> list[CheckResult]:
    bus = ctx.bus
    got = asyncio.Event()
    marker = uuid.uuid4().hex

    async def handle(event: Event) -> None:
        if event.payload.get("doctor") == marker:
            got.set()

    def probe() -> Event:
        # A type of its own, so consumers of a user's --topic can recognise and skip it.
        return Event(
            topic=ctx.topic, payload={"doctor": marker}, metadata=EventMetadata(event_type=PROBE_TYPE)
        )

    results: list[CheckResult] = []
    group = ctx.group if bus.capabilities.consumer_groups else None
    started = time.perf_counter()
    try:
        sub = await bus.subscribe(ctx.topic, handle, group=group)
    except Exception as exc:
        results.append(_failed("group join", exc))
        # Writing may still work: tell the two permissions apart.
        try:
            await bus.publish(probe())
            results.append(CheckResult("publish", True, f"wrote to {ctx.topic!r}"))
        except Exception as publish_exc:
            results.append(_failed("publish", publish_exc))
        return results
    joined = time.perf_counter()
    results.append(CheckResult("group join", True, f"subscribed to {ctx.topic!r} in {joined - started:.2f}s"))
    try:
        sent = time.perf_counter()
        await bus.publish(probe())
        await asyncio.wait_for(got.wait(), ctx.timeout)
        # ``handled`` counts settled acks (failed ones too, which also count in ``errors``
        # and reach the observer).
        deadline = time.monotonic() + ctx.timeout
        while sub.handled == 0:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)  # no event marks a settled ack: poll with a deadline
        rtt = (time.perf_counter() - sent) * 1000
        if sub.handled and not ctx.ack_errors:
            ctx.acked = True
            results.append(CheckResult("round trip", True, f"publish -> consume -> ack in {rtt:.1f} ms"))
        else:
            cause = ctx.ack_errors[-1] if ctx.ack_errors else None
            detail = f"consumed, but the ack failed: {cause}" if cause else "consumed, but not acked in time"
            results.append(
                CheckResult(
                    "round trip",
                    False,
                    detail,
                    _fix_for(cause) if cause is not None else "check the consumer's permissions (ack/commit)",
                )
            )
    except asyncio.TimeoutError:
        results.append(
            CheckResult(
                "round trip",
                False,
                f"the event did not come back within {ctx.timeout}s",
                "check read permissions and the broker's logs",
            )
        )
    except Exception as exc:
        results.append(_failed("round trip", exc))
    finally:
        await sub.stop(timeout=2.0)
    dlq = f"{ctx.topic}.dlq"
    if not ctx.scratch:
        # A probe in a real dead-letter topic would be listed, and replayed, with the rest.
        results.append(CheckResult("dead-letter write", None, f"not tried on {dlq} (run without --topic)"))
        return results
    try:
        await bus.publish(
            Event(topic=dlq, payload={"doctor": marker}, metadata=EventMetadata(event_type=PROBE_TYPE))
        )
        results.append(CheckResult("dead-letter write", True, f"wrote to {dlq}"))
    except Exception as exc:
        results.append(_failed("dead-letter write", exc))
    return results


async def _join_user_group(ctx: DoctorContext, topic: str) -> CheckResult:
    """Join the user's group on a scratch topic: proves the group permission without
    being assigned (and acking) anything of the application's topics."""
    bus = ctx.bus
    assert ctx.user_group is not None
    name = f"group join ({ctx.user_group})"
    started = time.perf_counter()
    try:
        sub = await bus.subscribe(topic, lambda event: None, group=ctx.user_group)
    except Exception as exc:
        return _failed(name, exc)
    await sub.stop(timeout=2.0)
    return CheckResult(
        name, True, f"joined on the scratch topic {topic!r} in {time.perf_counter() - started:.2f}s"
    )


async def run_doctor(
    url: str, *, group: str | None = None, topic: str | None = None, timeout: float = 15.0
) -> list[CheckResult]:
    """Run every check against ``url``; never raises for what it diagnoses."""
    results: list[CheckResult] = []
    ack_errors: list[BaseException] = []
    try:
        bus = create_bus(url, observers=(_AckErrors(ack_errors),))
    except EventBusError as exc:
        return [_failed("configuration", exc)]
    started = time.perf_counter()
    try:
        await bus.start()
    except Exception as exc:
        await bus.close(timeout=1.0)
        return [_failed("connect", exc)]
    results.append(
        CheckResult(
            "connect",
            True,
            f"{redact_url(url)} ({bus.transport.name}) in {time.perf_counter() - started:.2f}s",
        )
    )
    run = uuid.uuid4().hex[:10]
    scratch_topic = f"dotmac-doctor.{run}"
    ctx = DoctorContext(
        bus=bus,
        topic=topic or scratch_topic,
        group=f"dotmac-doctor-{run}",
        scratch=topic is None,
        timeout=timeout,
        ack_errors=ack_errors,
        user_group=group if bus.capabilities.consumer_groups else None,
    )
    try:
        results += await _round_trip(ctx)
        if topic is None:
            ctx.scratch_topics.append(scratch_topic)
        if ctx.user_group is not None:
            results.append(await _join_user_group(ctx, scratch_topic))
            if scratch_topic not in ctx.scratch_topics:
                ctx.scratch_topics.append(scratch_topic)
        hook = get_plugin_manager().hook
        for checks in hook.dotmac_events_doctor_checks(transport=bus.transport):
            for check in checks or ():
                try:
                    results += await check(bus.transport, ctx)
                except Exception as exc:
                    results.append(_failed(getattr(check, "__name__", "check"), exc))
    finally:
        await bus.close(timeout=2.0)
    return results


def format_table(results: Sequence[CheckResult]) -> str:
    """The checks as a text table, then the verdict."""
    rows = [(r.name, {True: "ok", False: "FAIL", None: "info"}[r.ok], r.detail, r.fix or "") for r in results]
    widths = [max(len(row[i]) for row in [("check", "verdict", "detail", "fix"), *rows]) for i in range(2)]
    lines = [f"{'check':<{widths[0]}}  {'verdict':<{widths[1]}}  detail"]
    for name, verdict, detail, fix in rows:
        lines.append(f"{name:<{widths[0]}}  {verdict:<{widths[1]}}  {detail}")
        if fix:
            lines.append(f"{'':<{widths[0]}}  {'':<{widths[1]}}  fix: {fix}")
    failed = sum(1 for r in results if r.ok is False)
    lines.append("")
    lines.append(f"{failed} check(s) failed" if failed else "all checks passed")
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    return {
        "ok": all(r.ok is not False for r in results),
        "checks": [{"name": r.name, "ok": r.ok, "detail": r.detail, "fix": r.fix} for r in results],
    }
