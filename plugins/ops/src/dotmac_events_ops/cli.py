"""``dotmac-events groups`` and ``dotmac-events ui``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from typing import Any, TextIO

from dotmac.events.config import ENV_URL
from dotmac.events.errors import ConfigurationError

__all__ = ["ENV_TOKEN", "register"]

log = logging.getLogger(__name__)

ENV_TOKEN = "DOTMAC_EVENTS_OPS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
"""The token that enables the page's write actions when ``--token`` is not given
(keeps it out of the process list)."""


def _url(args: argparse.Namespace) -> str:
    url: str = args.url or os.environ.get(ENV_URL) or "memory://"
    return url


def _topics(args: argparse.Namespace) -> list[str]:
    if not args.topic:
        raise ConfigurationError("name the topics to look at: --topic T (repeatable)")
    return list(args.topic)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


async def _groups(args: argparse.Namespace, out: TextIO) -> int:
    from dotmac.events import create_bus

    topics = _topics(args)
    async with create_bus(_url(args)) as bus:
        infos = [info for topic in topics for info in await bus.groups(topic)]
    if args.json:
        for info in infos:
            record = {
                "topic": info.topic,
                "group": info.group,
                "lag": info.lag,
                "pending": info.pending,
                "oldest_pending_age": info.oldest_pending_age,
                "members": list(info.members),
            }
            out.write(json.dumps(record) + "\n")
        return 0
    header = ("TOPIC", "GROUP", "LAG", "PENDING", "OLDEST-PENDING-S", "MEMBERS")
    rows = [header] + [
        (
            i.topic,
            i.group,
            _fmt(i.lag),
            _fmt(i.pending),
            _fmt(i.oldest_pending_age),
            ",".join(i.members) or "-",
        )
        for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[c]) for c, cell in enumerate(row[:-1])]
        out.write("  ".join([*cells, row[-1]]) + "\n")
    return 0


async def _ui(args: argparse.Namespace, out: TextIO) -> int:
    from dotmac.events import create_bus

    from .app import OpsServer

    token = args.token or os.environ.get(ENV_TOKEN) or None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    async with create_bus(_url(args)) as bus:
        server = OpsServer(
            bus,
            host=args.host,
            port=args.port,
            token=token,
            topics=_topics(args),
            dlq_topics=args.dlq_topic or None,
            lag_interval=args.interval,
        )
        async with server:
            record = {"ui": server.url, "writable": server.state.writable, "pid": os.getpid()}
            out.write(json.dumps(record) + "\n")
            out.flush()
            await stop.wait()
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    url_help = f"transport URL (default: ${ENV_URL}, else memory://)"
    g = subparsers.add_parser("groups", help="consumer groups of topics: lag, pending, members")
    g.add_argument("--url", default=None, help=url_help)
    g.add_argument("--topic", action="append", default=[], help="a topic to look at (repeatable)")
    g.add_argument("--json", action="store_true", help="one JSON object per group and line")
    g.set_defaults(func=_groups)

    u = subparsers.add_parser("ui", help="serve the ops page, probes and metrics for a transport")
    u.add_argument("--url", default=None, help=url_help)
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    u.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    u.add_argument("--topic", action="append", default=[], help="a topic whose groups to show (repeatable)")
    u.add_argument(
        "--dlq-topic", action="append", default=[], help="a dead-letter topic to browse (repeatable)"
    )
    u.add_argument("--interval", type=float, default=5.0, help="seconds between lag refreshes for /metrics")
    u.add_argument(
        "--token",
        default=None,
        help=f"enables dead-letter replay for who knows it (default: ${ENV_TOKEN}; read-only without)",
    )
    u.set_defaults(func=_ui)
