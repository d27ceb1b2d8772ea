"""The seed's import path: re-exports, one import warning, warning aliases, guidance."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
import warnings
from pathlib import Path
from types import ModuleType

import pytest

import dotmac.events
from dotmac.events import ConfigurationError, EventBus, PluginNotFoundError
from dotmac.events.testing import Collector
from dotmac_events_redis.testing import RedisServer, redis_server_available

SEED_NAMES = [
    "MemoryConfig",
    "create_memory_bus",
    "RedisConfig",
    "create_redis_bus",
    "ConsumerOptions",
    "create_exponential_retry_options",
    "create_dotmac_observability_hooks",
]


@pytest.fixture
def shim() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module("dotmac_shared.events")


def _run(code: str, *, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if extra_path is not None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")]),
        }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, env=env
    )


def test_import_warns_once_naming_the_new_path() -> None:
    # A fresh interpreter: the warning belongs to the first import of the package.
    result = _run(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import dotmac_shared.events
            from dotmac_shared.events import Event, create_bus, MemoryConfig
            import dotmac_shared.events as again
        ours = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        for w in ours:
            print(w.filename, "|", w.message)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    filename, message = lines[0].split(" | ")
    # Attributed to the line that imported it, not to the import machinery.
    assert filename == "<string>"
    assert "dotmac_shared.events is deprecated; import dotmac.events instead" in message


def test_the_warning_is_shown_by_default_in_a_script() -> None:
    result = _run("import dotmac_shared.events")
    assert result.returncode == 0
    assert "DeprecationWarning: dotmac_shared.events is deprecated; import dotmac.events" in result.stderr


def test_reexports_the_whole_api(shim: ModuleType) -> None:
    assert shim.__all__ == dotmac.events.__all__
    for name in dotmac.events.__all__:
        assert getattr(shim, name) is getattr(dotmac.events, name), name
    assert {"Event", "create_bus", "RedisConfig", "create_memory_event_bus"} <= set(dir(shim))


def test_star_import_takes_the_api_and_no_plugin_name() -> None:
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exec("from dotmac_shared.events import *", namespace)
    assert set(dotmac.events.__all__) <= set(namespace)
    # Plugin names are resolved on use, so a missing plugin cannot break import *.
    assert "KafkaConfig" not in namespace


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_names_resolve_to_the_new_objects(shim: ModuleType, name: str) -> None:
    assert getattr(shim, name) is getattr(dotmac.events, name)


@pytest.mark.skipif(
    importlib.util.find_spec("dotmac_events_kafka") is not None, reason="kafka plugin installed"
)
def test_a_missing_plugin_is_named_with_its_install_command(shim: ModuleType) -> None:
    with pytest.raises(PluginNotFoundError, match=r'pip install "dotmac-events\[kafka\]"'):
        shim.KafkaConfig  # noqa: B018
    with pytest.raises(PluginNotFoundError, match=r"dotmac-events\[kafka\]"):
        exec("from dotmac_shared.events import create_kafka_bus", {})
    with pytest.warns(DeprecationWarning, match="create_kafka_bus"), pytest.raises(PluginNotFoundError):
        shim.create_kafka_event_bus("localhost:9092")


def test_unknown_names_are_attribute_errors_of_the_shim(shim: ModuleType) -> None:
    with pytest.raises(AttributeError, match="module 'dotmac_shared.events' has no attribute 'Nope'"):
        shim.Nope  # noqa: B018
    assert not hasattr(shim, "Nope")


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("EventRecord", "Event(topic=..., payload="),
        ("ConsumerRecord", "the Event a handler receives"),
        ("PublishResult", "PublishError"),
        ("SubscriptionError", "EventBusError"),
        ("RedisEventAdapter", 'create_bus("redis://'),
        ("KafkaEventAdapter", 'create_bus("kafka://'),
        ("MemoryEventAdapter", 'create_bus("memory://")'),
        ("EventBusSDK", "EventBus"),
    ],
)
def test_replaced_names_say_what_replaces_them(name: str, hint: str) -> None:
    with pytest.raises(ImportError) as info:
        exec(f"from dotmac_shared.events import {name}", {})
    message = str(info.value)
    assert f"dotmac_shared.events.{name} has no equivalent" in message
    assert hint in message


def test_memory_alias_warns_and_builds_a_memory_bus(shim: ModuleType) -> None:
    with pytest.warns(DeprecationWarning, match=r"use dotmac\.events\.create_memory_bus") as record:
        bus = shim.create_memory_event_bus()
    assert isinstance(bus, EventBus)
    assert bus.transport.__class__.__name__ == "MemoryTransport"
    # Attributed to the caller's line.
    assert record[0].filename == __file__


def test_redis_alias_warns_and_takes_a_url(shim: ModuleType) -> None:
    with pytest.warns(DeprecationWarning, match=r'create_bus\("redis://host:port/db"\)'):
        bus = shim.create_redis_event_bus("redis://cache.internal:6380/2")
    config = bus.transport.config  # type: ignore[attr-defined]
    assert (config.host, config.port, config.db) == ("cache.internal", 6380, 2)


def test_redis_alias_rejects_another_scheme_without_echoing_the_url(shim: ModuleType) -> None:
    with (
        pytest.warns(DeprecationWarning, match="create_redis_event_bus"),
        pytest.raises(ConfigurationError) as info,
    ):
        shim.create_redis_event_bus("kafka://admin:hunter2@broker:9092")
    assert "'kafka://...'" in str(info.value)
    assert "hunter2" not in str(info.value)
    with (
        pytest.warns(DeprecationWarning, match="create_redis_event_bus"),
        pytest.raises(ConfigurationError, match="without a scheme"),
    ):
        shim.create_redis_event_bus("localhost:6379")


async def test_seed_memory_example_runs_verbatim(
    shim: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    create_memory_bus, MemoryConfig = shim.create_memory_bus, shim.MemoryConfig
    ConsumerOptions = shim.ConsumerOptions
    bus = create_memory_bus(MemoryConfig(max_queue_size=1000, enable_persistence=True))
    seen = Collector()
    async with bus:
        await bus.subscribe(
            "orders.created",
            seen,
            group="billing",
            options=ConsumerOptions(max_retries=3, backoff_base_ms=1000, dlq_topic="failed.events"),
        )
        await bus.publish(shim.Event(topic="orders.created", payload={"id": 7}))
        await seen.wait_count(1, 5)
    assert seen.events[0].payload == {"id": 7}
    options = shim.create_exponential_retry_options(max_retries=5, base_delay_ms=100, max_delay_ms=30000)
    assert options.max_retries == 5


async def test_seed_redis_example_runs_verbatim(shim: ModuleType) -> None:
    if not redis_server_available():
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        topic = f"orders.{uuid.uuid4().hex[:8]}"
        bus = shim.create_redis_bus(
            shim.RedisConfig(host=server.host, port=server.port, max_stream_length=1000, prefetch_count=10)
        )
        seen = Collector()
        async with bus:
            await bus.subscribe(topic, seen, group="billing")
            await bus.publish(shim.Event(topic=topic, payload={"id": 7}, key="7"))
            await seen.wait_count(1, 10)
        assert seen.events[0].payload == {"id": 7}


def test_dotmac_shared_is_a_namespace_other_distributions_can_share(tmp_path: Path) -> None:
    # Another dotmac_shared.* distribution installed elsewhere on the path.
    other = tmp_path / "dotmac_shared" / "cache"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("NAME = 'cache'\n")
    result = _run(
        """
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import dotmac_shared, dotmac_shared.cache, dotmac_shared.events
        print(getattr(dotmac_shared, "__file__", None), dotmac_shared.cache.NAME)
        print(dotmac_shared.events.Event.__name__)
        """,
        extra_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "cache", "Event"]
