"""``dotmac-events doctor`` on Kafka: a healthy broker, a refused login, a session
timeout the broker refuses, a refused connection, and a missing ACL grant."""

from __future__ import annotations

import concurrent.futures
import io
import json
from typing import Any

import pytest
from aiokafka import errors as kerr

from dotmac.events import Event
from dotmac.events.cli import main
from dotmac.events.doctor import PROBE_TYPE, CheckResult, _failed
from dotmac.events.testing import wait_for
from dotmac_events_kafka import create_kafka_bus
from dotmac_events_kafka.errors import classify
from dotmac_events_kafka.testing import TansuBroker, fast_config, fast_url, free_port


def doctor(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main(["doctor", "--url", url, "--json", "--timeout", "20", *args], out=out)
    return code, json.loads(out.getvalue())


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_broker_passes_every_check(kafka_servers: str, kafka_kind: str) -> None:
    code, report = doctor(fast_url(kafka_servers))
    by_name = checks(report)
    assert code == 0 and report["ok"], report
    assert {"connect", "group join", "round trip", "dead-letter write", "cleanup"} <= set(by_name)
    assert by_name["idempotent producer"]["detail"].startswith("on" if kafka_kind != "tansu" else "off")


def test_session_timeout_the_broker_refuses_fails_with_its_fix(kafka_servers: str, kafka_kind: str) -> None:
    if kafka_kind != "noida":
        pytest.skip("only noida-db enforces group.min.session.timeout.ms here")
    code, report = doctor(f"kafka://{kafka_servers}?session_timeout_ms=2000&heartbeat_interval_ms=200")
    join = checks(report)["group join"]
    assert code == 1 and join["ok"] is False
    assert join["fix"] == "change session_timeout_ms"


def test_refused_connection_fails_connect() -> None:
    code, report = doctor(f"kafka://127.0.0.1:{free_port()}?request_timeout_ms=2000")
    assert code == 1
    assert report["checks"][0]["name"] == "connect" and report["checks"][0]["ok"] is False
    assert "unreachable" in report["checks"][0]["detail"]


def test_wrong_password_is_an_authentication_failure() -> None:
    with TansuBroker(extra_args=["--authentication"]) as broker:
        url = f"kafka://svc:wrong-pw-xyz@{broker.bootstrap_servers}?sasl_mechanism=SCRAM-SHA-256"
        code, report = doctor(url)
    connect = report["checks"][0]
    assert code == 1 and connect["name"] == "connect" and connect["ok"] is False
    assert "SASL SCRAM-SHA-256 login of user 'svc' failed" in connect["detail"], connect
    assert connect["fix"] == "fix the credentials"
    assert "wrong-pw-xyz" not in json.dumps(report)


def test_missing_group_grant_names_it() -> None:
    # Neither Tansu nor noida-db has ACLs: the broker's answer is built here.
    error = classify(kerr.GroupAuthorizationFailedError("billing"), what="subscribe", group="billing")
    assert error is not None
    result = _failed("group join", error)
    assert result == CheckResult("group join", False, str(error), "grant READ on group 'billing'")


async def test_with_topic_and_group_the_application_group_loses_nothing(
    kafka_servers: str, topic: str, group: str
) -> None:
    """doctor --topic T --group G joins G only on a scratch topic: events waiting for G
    on T are all delivered to G afterwards, with the one probe doctor published."""
    config = fast_config(kafka_servers)
    async with create_kafka_bus(config) as app:
        first = await app.subscribe(topic, lambda event: None, group=group)
        await first.stop()
        await app.publish_many([Event(topic=topic, payload={"i": i}, key=str(i)) for i in range(20)])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        code, report = pool.submit(
            doctor, fast_url(kafka_servers), "--topic", topic, "--group", group
        ).result()
    by_name = checks(report)
    assert code == 0, report
    assert by_name[f"group join ({group})"]["ok"] is True
    assert by_name["dead-letter write"]["ok"] is None
    seen: list[Event] = []
    async with create_kafka_bus(config) as app:
        await app.subscribe(topic, seen.append, group=group)
        await wait_for(lambda: len(seen) >= 21, 30, what="every waiting event and the probe")
    assert sorted(e.payload["i"] for e in seen if "i" in e.payload) == list(range(20))
    assert [e.event_type for e in seen if "doctor" in e.payload] == [PROBE_TYPE]
