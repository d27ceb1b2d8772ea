"""The plugin host, exercised through real entry points written to a temporary path."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

from dotmac.events import ConfigurationError, PluginNotFoundError, create_bus

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from dotmac.events.plugins import get_plugin_manager, get_registry, plugin_infos

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("fresh_plugins")


def _install_fake_distribution(root: Path, name: str, module: str, source: str) -> None:
    dist = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(f"[dotmac_events]\n{name} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


GOOD_PLUGIN = """
    from __future__ import annotations
    from attrs import frozen
    from dotmac.events import Capabilities, TransportSpec, hookimpl
    from dotmac.events.transport import Transport

    @frozen
    class EchoConfig:
        host: str = "localhost"
        port: int = 1

    class EchoTransport(Transport):
        name = "echo"
        def __init__(self, config): self.config = config
        async def start(self): pass
        async def close(self): pass
        async def publish(self, messages): pass
        async def subscribe(self, spec, sink): raise NotImplementedError

    @hookimpl
    def dotmac_events_register_transports(register):
        register.add_transport(TransportSpec(
            name="echo", schemes=("echo",), config_class=EchoConfig, factory=EchoTransport,
            capabilities=Capabilities(consumer_groups=False),
            parse_url=lambda url: {"host": url.split("//")[1].split(":")[0]},
        ))
"""


def test_builtins_register_through_hooks() -> None:
    registry = get_registry()
    assert "json" in registry.codecs
    assert {"none", "fixed", "exponential"} <= set(registry.retry_policies)
    infos = {info["name"]: info for info in plugin_infos()}
    assert infos["dotmac.events._builtin"]["codecs"] == ["json", "raw"]


def test_third_party_transport_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(tmp_path, "dotmac-events-echo", "dotmac_events_echo_fake", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("DOTMAC_EVENTS_LOAD_PLUGINS", raising=False)
    bus = create_bus("echo://example:1?port=7")
    assert bus.transport.name == "echo"
    assert bus.transport.config.host == "example"  # type: ignore[attr-defined]
    assert bus.transport.config.port == 7  # type: ignore[attr-defined]
    info = {i["name"]: i for i in plugin_infos()}["dotmac-events-echo"]
    assert info["version"] == "dotmac-events-echo 1.2.3"
    assert info["transports"] == ["echo"]
    assert info["hooks"] == ["dotmac_events_register_transports"]


def test_a_broken_plugin_is_logged_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _install_fake_distribution(
        tmp_path, "broken", "dotmac_events_broken_fake", "raise ImportError('no libfoo')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("DOTMAC_EVENTS_LOAD_PLUGINS", raising=False)
    with caplog.at_level(logging.WARNING, logger="dotmac.events.plugins"):
        pm = get_plugin_manager()
    assert pm.get_plugin("broken") is None
    assert "skipping dotmac-events plugin 'broken' (broken 1.2.3): ImportError: no libfoo" in caplog.text
    assert "json" in get_registry().codecs  # the host keeps working
    failed = [i for i in plugin_infos() if i["name"] == "broken"]
    assert failed and failed[0]["loaded"] is False


def test_autoload_can_be_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(tmp_path, "dotmac-events-echo", "dotmac_events_echo_fake2", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DOTMAC_EVENTS_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert get_registry().transports == {}
    with pytest.raises(PluginNotFoundError, match="echo"):
        create_bus("echo://x")


def test_load_only_named_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(tmp_path, "dotmac-events-echo", "dotmac_events_echo_fake3", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DOTMAC_EVENTS_LOAD_PLUGINS", "dotmac-events-echo")
    assert set(get_registry().transports) == {"echo"}
    monkeypatch.setenv("DOTMAC_EVENTS_LOAD_PLUGINS", "")
    from dotmac.events.plugins import reset_plugins

    reset_plugins()
    assert get_registry().transports == {}


def test_scheme_clash_names_both_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(tmp_path, "echo-one", "dotmac_events_echo_a", GOOD_PLUGIN)
    _install_fake_distribution(tmp_path, "echo-two", "dotmac_events_echo_b", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DOTMAC_EVENTS_LOAD_PLUGINS", "echo-one,echo-two")
    with pytest.raises(ConfigurationError, match=r"'echo' is registered by both 'echo-\w+' and 'echo-\w+'"):
        get_registry()


def test_missing_transport_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOTMAC_EVENTS_LOAD_PLUGINS", "")
    with pytest.raises(PluginNotFoundError, match=r'pip install "dotmac-events\[redis\]"'):
        create_bus("redis://x")
    with pytest.raises(PluginNotFoundError, match=r'pip install "dotmac-events\[kafka\]"'):
        create_bus("kafka://x:9092")
    with pytest.raises(PluginNotFoundError, match="'carrier-pigeon' URL scheme"):
        create_bus("carrier-pigeon://x")


def test_lazy_plugin_names_explain_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import dotmac.events

    monkeypatch.setitem(sys.modules, "dotmac_events_redis", None)  # as if not installed
    with pytest.raises(PluginNotFoundError, match=r'pip install "dotmac-events\[redis\]"'):
        dotmac.events.RedisConfig  # noqa: B018
    with pytest.raises(AttributeError):
        dotmac.events.NoSuchThing  # noqa: B018


def test_a_retry_policy_name_registered_twice_is_refused() -> None:
    from dotmac.events.registry import Registry
    from dotmac.events.retry import NoRetry

    registry = Registry()
    registry._current = "first-plugin"
    registry.add_retry_policy("patient", lambda options: NoRetry())
    registry._current = "second-plugin"
    with pytest.raises(
        ConfigurationError, match="'patient' is registered by both 'first-plugin' and 'second-plugin'"
    ):
        registry.add_retry_policy("patient", lambda options: NoRetry())


def test_one_table_names_the_first_party_plugins() -> None:
    import dotmac.events
    from dotmac.events.registry import FIRST_PARTY, KNOWN_EXTRAS

    core = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(core.read_text())["project"]["optional-dependencies"]
    plugin_extras = {name for name, wanted in extras.items() if wanted == [f"dotmac-events-{name}"]}
    assert plugin_extras == {plugin.extra for plugin in FIRST_PARTY}
    for plugin in FIRST_PARTY:
        assert f"dotmac-events-{plugin.extra}" in extras["all"], plugin
        for name in plugin.provides:
            assert KNOWN_EXTRAS[name] == plugin.extra
        for name in plugin.names:
            assert name in dir(dotmac.events)


def test_the_core_tests_leave_the_plugins_as_they_found_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core tests see the memory plugin only; tests of another folder run after
    them in the same process (the plugins' tests) see every installed plugin again."""
    monkeypatch.setenv("DOTMAC_EVENTS_LOAD_PLUGINS", "")  # what the later tests must find
    core = pytester.mkdir("core")
    (core / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (core / "test_core.py").write_text(
        textwrap.dedent(
            """
            import os

            def test_core():
                assert os.environ["DOTMAC_EVENTS_LOAD_PLUGINS"] == "memory"
            """
        )
    )
    (pytester.mkdir("plugin") / "test_plugin.py").write_text(
        textwrap.dedent(
            """
            import os
            from dotmac.events.plugins import get_registry

            def test_plugin():
                assert os.environ["DOTMAC_EVENTS_LOAD_PLUGINS"] == ""
                assert get_registry().transports == {}
            """
        )
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "core", "plugin")
    result.assert_outcomes(passed=2)
