"""``dotmac-events doctor``: the generic checks, the table and JSON, the exit code, and
checks a third-party plugin contributes through ``dotmac_events_doctor_checks``."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from dotmac.events import AuthenticationError, ConfigurationError, TransportUnavailableError, hookimpl
from dotmac.events.cli import main
from dotmac.events.doctor import CheckResult, DoctorCheck, DoctorContext, _failed, format_table
from dotmac.events.plugins import get_plugin_manager
from dotmac.events.transport import Transport

pytest.importorskip("dotmac_events_memory")


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["doctor", *args], out=out)
    return code, out.getvalue()


def test_healthy_memory_url_passes_with_exit_0(memory_url: str) -> None:
    code, text = run("--url", memory_url)
    assert code == 0, text
    for name in ("connect", "group join", "round trip", "dead-letter write"):
        assert name in text
    assert text.rstrip().endswith("all checks passed")


def test_json_report(memory_url: str) -> None:
    code, text = run("--url", memory_url, "--json")
    report = json.loads(text)
    assert code == 0 and report["ok"] is True
    assert [c["name"] for c in report["checks"]][:2] == ["connect", "group join"]


def test_unknown_scheme_fails_with_exit_1() -> None:
    code, text = run("--url", "nosuch://x", "--json")
    report = json.loads(text)
    assert code == 1 and report["ok"] is False
    assert report["checks"][0]["name"] == "configuration"


class _Contributed:
    seen: list[tuple[str, str]] = []

    @hookimpl
    def dotmac_events_doctor_checks(self, transport: Transport) -> Sequence[DoctorCheck] | None:
        async def broker_rules(transport: Transport, ctx: DoctorContext) -> Sequence[CheckResult]:
            self.seen.append((ctx.topic, ctx.group))
            return [CheckResult("third-party rule", False, "quota too low", "raise the quota")]

        return [broker_rules] if transport.name == "memory" else None


@pytest.fixture
def contributed() -> Iterator[_Contributed]:
    plugin = _Contributed()
    pm = get_plugin_manager()
    pm.register(plugin, name="doctor-test-plugin")
    yield plugin
    pm.unregister(plugin)


def test_a_plugin_contributes_checks_and_a_failure_sets_exit_1(
    memory_url: str, contributed: _Contributed
) -> None:
    code, text = run("--url", memory_url)
    assert code == 1
    (line,) = [line for line in text.splitlines() if line.startswith("third-party rule")]
    assert line.split()[2] == "FAIL", line
    assert "fix: raise the quota" in text
    assert text.rstrip().endswith("1 check(s) failed")
    ((topic, group),) = contributed.seen
    assert topic.startswith("dotmac-doctor.") and group.startswith("dotmac-doctor-")


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (AuthenticationError("no", permission="+xadd"), "grant +xadd"),
        (AuthenticationError("no", permission="authenticate"), "fix the credentials"),
        (ConfigurationError("no", setting="session_timeout_ms"), "change session_timeout_ms"),
        (TransportUnavailableError("down"), "check host, port, TLS and that the broker runs"),
    ],
)
def test_each_failure_names_its_fix(error: Exception, fix: str) -> None:
    assert _failed("x", error).fix == fix


def test_table_layout() -> None:
    text = format_table([CheckResult("connect", True, "fine"), CheckResult("limit", None, "1 MB")])
    lines: list[Any] = text.splitlines()
    assert lines[0].split() == ["check", "verdict", "detail"]
    assert lines[1].split()[:2] == ["connect", "ok"] and lines[2].split()[:2] == ["limit", "info"]


def test_group_and_topic_options(memory_url: str) -> None:
    code, text = run("--url", memory_url, "--topic", "orders.created", "--group", "billing", "--json")
    by_name = {c["name"]: c for c in json.loads(text)["checks"]}
    assert code == 0
    assert "'orders.created'" in by_name["group join"]["detail"]
    assert by_name["group join (billing)"]["ok"] is True
    assert by_name["dead-letter write"]["ok"] is None
