"""Plugins add CLI subcommands through ``dotmac_events_register_commands``."""

from __future__ import annotations

import argparse
import io
import logging
from typing import Any, TextIO

import pytest

from dotmac.events import hookimpl
from dotmac.events.cli import build_parser, main
from dotmac.events.errors import ConfigurationError
from dotmac.events.plugins import get_plugin_manager


class _Greeter:
    @hookimpl
    def dotmac_events_register_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        group = subparsers.add_parser("greet", help="say hello")
        actions = group.add_subparsers(dest="greet_command", required=True)
        hello = actions.add_parser("hello", help="sync command")
        hello.add_argument("--name", default="world")
        hello.set_defaults(func=self.hello)
        later = actions.add_parser("later", help="async command")
        later.add_argument("--code", type=int, default=0)
        later.set_defaults(func=self.later)
        failing = actions.add_parser("fail", help="raises a bus error")
        failing.set_defaults(func=self.fail)

    def hello(self, args: argparse.Namespace, out: TextIO) -> int:
        out.write(f"hello {args.name}\n")
        return 0

    async def later(self, args: argparse.Namespace, out: TextIO) -> int:
        out.write("later\n")
        return int(args.code)

    def fail(self, args: argparse.Namespace, out: TextIO) -> int:
        raise ConfigurationError("bad setting")


class _Broken:
    @hookimpl
    def dotmac_events_register_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        raise RuntimeError("boom")


@pytest.fixture
def plugins(fresh_plugins: None) -> None:
    pm = get_plugin_manager()
    pm.register(_Greeter(), name="greeter")
    pm.register(_Broken(), name="broken")


def test_plugin_commands_run_sync_and_async(plugins: None) -> None:
    out = io.StringIO()
    assert main(["greet", "hello", "--name", "ada"], out=out) == 0
    assert main(["greet", "later", "--code", "3"], out=out) == 3
    assert out.getvalue() == "hello ada\nlater\n"


def test_plugin_command_errors_exit_2(plugins: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["greet", "fail"], out=io.StringIO()) == 2
    assert "bad setting" in capsys.readouterr().err


def test_a_broken_plugin_is_logged_and_the_cli_keeps_working(
    plugins: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dotmac.events.cli"):
        parser = build_parser()
    assert "'broken'" in caplog.text and "boom" in caplog.text
    help_text = parser.format_help()
    assert "greet" in help_text and "publish" in help_text
