"""MkDocs hooks: reference pages generated from the code, so they cannot drift.

A page asks for generated text with a marker line of its own:

``<!-- generated: configuration -->``
    one section per installed transport plugin: URL schemes, capabilities and every
    field of its attrs config class (type, default, how to set it in a URL);
``<!-- generated: cli -->``
    every ``dotmac-events`` command and option, read from ``build_parser()``;
``<!-- generated: quick-start -->``
    the README's first Python block, the program the docs tests run on each broker.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
from pathlib import Path
from typing import Any

import attrs

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: (?P<name>[a-z-]+) -->$", re.MULTILINE)
# The words after a fence's language are for the docs tests (``python fragment``,
# ``python file=shop/events.py``); the fence extension takes only the language.
FENCE_WORDS = re.compile(r"^(?P<fence>[ \t]*(?:`{3,}|~{3,})[\w+-]+)[ \t]+[^`{\n]+$", re.MULTILINE)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    # In a table cell a backtick span keeps ``\|`` literally; an HTML one does not.
    return "<code>" + html.escape(text).replace("|", "&#124;").replace("\n", " ") + "</code>"


def _type_name(field: attrs.Attribute[Any]) -> str:
    kind = field.type
    if kind is None:
        return ""
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", repr(kind))
    return str(name).replace("typing.", "")


def _default(field: attrs.Attribute[Any]) -> str:
    default: Any = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs types Factory as a function
        try:
            value = default.factory() if not default.takes_self else None
        except Exception:
            return "computed"
        return _code(repr(value))
    return _code(repr(default))


def _url_parts(spec: Any) -> set[str]:
    """Fields the URL's own parts (user, password, host, port, path) set."""
    if spec.parse_url is None:
        return set()
    scheme = spec.schemes[0]
    try:
        return set(spec.parse_url(f"{scheme}://user:secret@host.example:1234/path"))
    except Exception:
        return set()


def configuration() -> str:
    from dotmac.events.plugins import get_registry

    registry = get_registry()
    out = []
    for name, spec in sorted(registry.transports.items()):
        cls = spec.config_class
        schemes = ", ".join(f"`{s}://`" for s in spec.schemes)
        out.append(f"## {name}\n")
        out.append(f"{spec.description}\n" if spec.description else "")
        out.append(f"Schemes: {schemes}. Config class: `{cls.__module__}.{cls.__qualname__}`.\n")
        caps = [k for k, v in attrs.asdict(spec.capabilities).items() if v is True]
        if caps:
            out.append(f"Capabilities: {', '.join(caps)}.\n")
        parts = _url_parts(spec)
        out.append("| field | type | default | in a URL |\n|---|---|---|---|")
        for field in attrs.fields(cls):
            if not field.init:
                continue
            url = "URL part, or " if field.name in parts else ""
            url += f"`?{field.name}=`"
            row = [_code(field.name), _code(_type_name(field)), _default(field), url]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        doc = (cls.__doc__ or "").strip()
        if doc:
            out.append(f'??? note "{cls.__qualname__}"\n')
            out.append("\n".join(f"    {line}" if line else "" for line in doc.splitlines()) + "\n")
    return "\n".join(out)


def _commands(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, f"{path} {name}")
    return found


def cli() -> str:
    from dotmac.events.cli import build_parser
    from dotmac.events.config import ENV_URL

    # Defaults read $DOTMAC_EVENTS_URL when the parser is built: the page shows the
    # documented default, never the URL (and its password) of the machine building it.
    saved = os.environ.pop(ENV_URL, None)
    try:
        root = build_parser()
    finally:
        if saved is not None:
            os.environ[ENV_URL] = saved
    out = []
    for path, parser in _commands(root, "dotmac-events"):
        level = "#" * min(2 + path.count(" "), 4)
        out.append(f"{level} `{path}`\n")
        if parser.description:
            out.append(f"{parser.description}\n")
        usage = parser.format_usage().removeprefix("usage: ").strip()
        out.append(f"```text\n{usage}\n```\n")
        rows = []
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            names = ", ".join(action.option_strings) or (action.metavar or action.dest)
            default = action.default
            shown = "" if default in (None, argparse.SUPPRESS, [], False) else _code(repr(default))
            rows.append(f"| {_code(str(names))} | {_cell(action.help or '')} | {shown} |")
        if rows:
            out.append("| argument | meaning | default |\n|---|---|---|")
            out.extend(rows)
            out.append("")
    return "\n".join(out)


def quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^```python\n.*?^```$", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise RuntimeError("README.md has no Python block for the quick start")
    return match.group(0)


GENERATORS = {"configuration": configuration, "cli": cli, "quick-start": quick_start}


def on_page_markdown(markdown: str, **_: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise KeyError(f"unknown generated section {name!r}")
        return GENERATORS[name]()

    return MARKER.sub(replace, FENCE_WORDS.sub(r"\g<fence>", markdown))
