"""``dotmac-events doctor`` when the broker refuses something: each check names what
failed and the fix, the checks after it still run, and the report never raises.

The refusals come from a memory transport that refuses one operation the way a
broker's ACL would (an :class:`AuthenticationError` naming the permission): the
memory broker has no permissions of its own to withhold.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from dotmac.events import (
    AuthenticationError,
    Delivery,
    Message,
    SubscriptionSpec,
    TransportSubscription,
    hookimpl,
)
from dotmac.events.doctor import CheckResult, DoctorCheck, DoctorContext, run_doctor
from dotmac.events.plugins import get_plugin_manager, get_registry, reset_plugins
from dotmac.events.registry import TransportSpec
from dotmac.events.transport import DeliverySink, Transport

pytest.importorskip("dotmac_events_memory")

from dotmac_events_memory import CAPABILITIES, MemoryConfig  # noqa: E402
from dotmac_events_memory.transport import MemoryTransport  # noqa: E402


class _AckRefused(Delivery):
    """``inner``, but the broker refuses its ack (it stays unacknowledged)."""

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # message, delivery_count, ordering_key
        return getattr(self._inner, name)

    async def ack(self) -> None:
        raise AuthenticationError("ack refused", permission="+xack")

    async def release(self) -> None:
        await self._inner.release()


class _Refusing(MemoryTransport):
    """Refuses the operations named in ``refused``:

    ``start``, ``subscribe`` (any group), ``subscribe:<group>``, ``publish`` (any
    topic), ``publish:.dlq`` (dead-letter topics), ``ack``, or ``deliver`` (nothing
    published ever reaches a subscriber).
    """

    refused: frozenset[str] = frozenset()
    withheld: list[Delivery]

    async def start(self) -> None:
        if "start" in self.refused:
            raise AuthenticationError("login refused", permission="authenticate")
        await super().start()

    async def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if "publish" in self.refused or (
                "publish:.dlq" in self.refused and message.topic.endswith(".dlq")
            ):
                raise AuthenticationError(f"write to {message.topic} refused", permission="WRITE")
        await super().publish(messages)

    async def subscribe(self, spec: SubscriptionSpec, sink: DeliverySink) -> TransportSubscription:
        if "subscribe" in self.refused or f"subscribe:{spec.group}" in self.refused:
            raise AuthenticationError(f"group {spec.group} refused", permission=f"READ on group {spec.group}")
        if "ack" in self.refused:
            inner = sink

            async def refusing_acks(delivery: Delivery) -> None:
                await inner(_AckRefused(delivery))

            sink = refusing_acks
        if "deliver" in self.refused:

            async def nothing_arrives(delivery: Delivery) -> None:
                self.withheld.append(delivery)  # taken from the queue, never handed over

            sink = nothing_arrives
        return await super().subscribe(spec, sink)


@pytest.fixture
def refusing() -> Iterator[Callable[..., str]]:
    """``refusing("publish", ...)``: the URL of a memory broker that refuses those operations."""
    reset_plugins()
    scheme = f"refusing{uuid.uuid4().hex[:6]}"
    refused: set[str] = set()

    def factory(config: MemoryConfig) -> Transport:
        transport = _Refusing(config)
        transport.refused = frozenset(refused)
        transport.withheld = []
        return transport

    get_registry().add_transport(
        TransportSpec(
            name=scheme,
            schemes=(scheme,),
            config_class=MemoryConfig,
            factory=factory,
            capabilities=CAPABILITIES,
            parse_url=lambda url: {"name": url.partition("://")[2]},
        )
    )

    def url(*operations: str) -> str:
        refused.update(operations)
        return f"{scheme}://doctor-{uuid.uuid4().hex[:8]}"

    yield url
    reset_plugins()


def _by_name(results: Sequence[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


async def test_refused_login_stops_at_connect_with_the_credentials_fix(refusing: Callable[..., str]) -> None:
    results = await run_doctor(refusing("start"), timeout=2.0)
    assert [(r.name, r.ok, r.fix) for r in results] == [("connect", False, "fix the credentials")]
    assert "login refused" in results[0].detail


async def test_refused_group_still_tells_whether_writing_works(refusing: Callable[..., str]) -> None:
    checks = _by_name(await run_doctor(refusing("subscribe"), timeout=2.0))
    assert checks["connect"].ok is True
    join = checks["group join"]
    assert (
        join.ok is False
        and join.fix is not None
        and join.fix.startswith("grant READ on group dotmac-doctor-")
    )
    assert checks["publish"].ok is True and "wrote to 'dotmac-doctor." in checks["publish"].detail
    assert "round trip" not in checks


async def test_refused_group_and_write_fail_both(refusing: Callable[..., str]) -> None:
    checks = _by_name(await run_doctor(refusing("subscribe", "publish"), timeout=2.0))
    assert checks["group join"].ok is False
    assert checks["publish"].ok is False and checks["publish"].fix == "grant WRITE"
    assert "refused" in checks["publish"].detail


async def test_refused_ack_is_named_as_the_cause(refusing: Callable[..., str]) -> None:
    checks = _by_name(await run_doctor(refusing("ack"), timeout=2.0))
    trip = checks["round trip"]
    assert trip.ok is False
    assert trip.detail.startswith("consumed, but the ack failed:") and "ack refused" in trip.detail
    assert trip.fix == "grant +xack"
    # The checks after the round trip still run.
    assert checks["dead-letter write"].ok is True


async def test_an_event_that_never_comes_back_fails_at_the_timeout(refusing: Callable[..., str]) -> None:
    checks = _by_name(await run_doctor(refusing("deliver"), timeout=0.3))
    trip = checks["round trip"]
    assert (trip.ok, trip.detail) == (False, "the event did not come back within 0.3s")
    assert trip.fix == "check read permissions and the broker's logs"


async def test_refused_dead_letter_write(refusing: Callable[..., str]) -> None:
    checks = _by_name(await run_doctor(refusing("publish:.dlq"), timeout=2.0))
    assert checks["round trip"].ok is True
    dead = checks["dead-letter write"]
    assert dead.ok is False and dead.fix == "grant WRITE" and ".dlq refused" in dead.detail


async def test_refused_user_group(refusing: Callable[..., str]) -> None:
    checks = _by_name(await run_doctor(refusing("subscribe:billing"), group="billing", timeout=2.0))
    assert checks["group join"].ok is True and checks["round trip"].ok is True
    billing = checks["group join (billing)"]
    assert billing.ok is False and billing.fix == "grant READ on group billing"


class _Crashing:
    @hookimpl
    def dotmac_events_doctor_checks(self, transport: Transport) -> Sequence[DoctorCheck]:
        async def quota_rules(transport: Transport, ctx: DoctorContext) -> Sequence[CheckResult]:
            raise RuntimeError("the admin API answered 500")

        return [quota_rules]


async def test_a_crashing_plugin_check_is_a_failed_check(refusing: Callable[..., str]) -> None:
    url = refusing()
    plugin = _Crashing()
    get_plugin_manager().register(plugin, name="doctor-crashing-check")
    try:
        checks = _by_name(await run_doctor(url, timeout=2.0))
    finally:
        get_plugin_manager().unregister(plugin)
    assert checks["round trip"].ok is True
    crash = checks["quota_rules"]
    assert (crash.ok, crash.detail, crash.fix) == (
        False,
        "RuntimeError: the admin API answered 500",
        "see the error",
    )
