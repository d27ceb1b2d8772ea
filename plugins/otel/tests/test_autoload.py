"""The process-wide observer: entry point, global providers, replacement, on/off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dotmac.events import Event, create_bus, create_dotmac_observability_hooks
from dotmac.events.errors import ConfigurationError
from dotmac.events.plugins import get_plugin_manager, reset_plugins
from dotmac_events_otel import ENV_VAR, DisabledPlugin, OtelObserver, configure
from dotmac_events_otel._autoload import enabled_in_environment


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """Tests that reconfigure the process-wide manager leave a freshly loaded one behind."""
    reset_plugins()
    yield
    reset_plugins()


async def roundtrip(bus_observers: list[object], topic: str, memory_url: str, outcomes) -> None:
    async with create_bus(memory_url, observers=[*bus_observers, outcomes]) as bus:
        await bus.subscribe(topic, lambda e: None, group="g")
        await bus.publish(Event(topic=topic, payload={}, tenant_id="acme"))
        await outcomes.wait(1, topic)


def test_entry_point_names_the_process_wide_observer():
    [ep] = [ep for ep in entry_points(group="dotmac_events") if ep.name == "otel"]
    assert ep.value == "dotmac_events_otel._autoload:plugin"
    assert isinstance(ep.load(), OtelObserver)


async def test_installed_plugin_traces_through_the_global_providers(
    global_telemetry, fresh_plugins, new_topic, memory_url, outcomes
):
    assert isinstance(get_plugin_manager().get_plugin("otel"), OtelObserver)
    topic = new_topic()
    await roundtrip([], topic, memory_url, outcomes)
    producer = global_telemetry.one(f"publish {topic}")
    consumer = global_telemetry.one(f"process {topic}")
    assert consumer.parent.span_id == producer.context.span_id
    assert global_telemetry.value("events_consumed_total", topic=topic, outcome="success") == 1


async def test_explicit_observer_replaces_the_process_wide_one(
    global_telemetry, telemetry, fresh_plugins, new_topic, memory_url, outcomes
):
    topic = new_topic()
    await roundtrip([telemetry.observer()], topic, memory_url, outcomes)
    # Recorded once, by the explicit observer: nothing went through the global providers.
    assert len(telemetry.named(f"publish {topic}")) == 1
    assert len(telemetry.named(f"process {topic}")) == 1
    assert telemetry.value("events_published_total", topic=topic) == 1
    assert global_telemetry.named(f"publish {topic}") == []
    assert global_telemetry.named(f"process {topic}") == []
    assert global_telemetry.value("events_published_total", topic=topic) == 0


async def test_prometheus_hooks_do_not_replace_the_otel_plugin(
    global_telemetry, fresh_plugins, new_topic, memory_url, outcomes
):
    """Different sinks: a Prometheus registry next to OpenTelemetry traces."""
    registry = CollectorRegistry()
    topic = new_topic()
    await roundtrip(
        [create_dotmac_observability_hooks(metrics_registry=registry)], topic, memory_url, outcomes
    )
    assert len(global_telemetry.named(f"process {topic}")) == 1
    assert f'events_consumed_total{{consumer_group="g",outcome="success",topic="{topic}"' in (
        generate_latest(registry).decode()
    )


async def test_configure_changes_and_disables_the_process_wide_observer(
    global_telemetry, fresh_plugins, new_topic, memory_url, outcomes
):
    observer = configure(tenant_metrics=True, tracing=False)
    assert get_plugin_manager().get_plugin("otel") is observer
    topic = new_topic()
    await roundtrip([], topic, memory_url, outcomes)
    assert global_telemetry.value("events_published_total", topic=topic, tenant="acme") == 1
    assert global_telemetry.named(f"publish {topic}") == []

    assert configure(enabled=False) is None
    assert isinstance(get_plugin_manager().get_plugin("otel"), DisabledPlugin)
    off_topic = new_topic()
    await roundtrip([], off_topic, memory_url, outcomes)
    assert global_telemetry.value("events_published_total", topic=off_topic) == 0


def test_environment_switch(monkeypatch):
    for value in ("", "1", "on", "TRUE", "yes"):
        monkeypatch.setenv(ENV_VAR, value)
        assert enabled_in_environment() is True
    for value in ("0", "off", "False", "no"):
        monkeypatch.setenv(ENV_VAR, value)
        assert enabled_in_environment() is False
    monkeypatch.setenv(ENV_VAR, "maybe")
    with pytest.raises(ConfigurationError, match="DOTMAC_EVENTS_OTEL must be on or off"):
        enabled_in_environment()


PROBE = """
import asyncio, json
from dotmac.events import create_bus
from dotmac.events.plugins import plugin_infos

async def main():
    async with create_bus("memory://probe") as bus:
        observed = bus._observers.any
    otel = [i for i in plugin_infos() if i["name"] == "otel"]
    print(json.dumps({"observed": observed, "otel": otel}))

asyncio.run(main())
"""


def probe(value: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if value is not None:
        env[ENV_VAR] = value
    env["DOTMAC_EVENTS_LOAD_PLUGINS"] = "memory,otel"
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    result["stderr"] = out.stderr
    return result


def test_turned_off_plugin_leaves_buses_without_observers():
    on = probe(None)
    assert on["observed"] is True
    [info] = on["otel"]
    assert "dotmac_events_publish_context" in info["hooks"]

    off = probe("off")
    # No hook at all: the bus resolves no observer and pays nothing per event.
    assert off["observed"] is False
    [info] = off["otel"]
    assert info["hooks"] == []


def test_bad_switch_value_skips_the_plugin_with_the_reason():
    result = probe("sometimes")
    assert result["observed"] is False
    [info] = result["otel"]
    assert info["loaded"] is False
    assert "DOTMAC_EVENTS_OTEL must be on or off" in info["error"]
    assert "DOTMAC_EVENTS_OTEL must be on or off" in result["stderr"]
