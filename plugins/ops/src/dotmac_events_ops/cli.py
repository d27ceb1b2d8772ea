"""``dotmac-events groups`` and ``dotmac-events ui``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from typing import TYPE_CHECKING, Any, TextIO

from dotmac.events import GroupInfo
from dotmac.events.config import ENV_URL
from dotmac.events.errors import ConfigurationError, UnsupportedOperationError

if TYPE_CHECKING:
    from dotmac.events import EventBus
    from dotmac.events.app import App

__all__ = ["ENV_TOKEN", "register"]

log = logging.getLogger(__name__)

ENV_TOKEN = "DOTMAC_EVENTS_OPS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
"""The token that enables the page's write actions when ``--token`` is not given
(keeps it out of the process list)."""


def _url(args: argparse.Namespace) -> str:
    url: str = args.url or os.environ.get(ENV_URL) or "memory://"
    return url


async def _all_topics(bus: EventBus) -> list[str]:
    """Every topic of the broker, or a precise error where the transport cannot list them."""
    try:
        return await bus.topics()
    except UnsupportedOperationError:
        raise UnsupportedOperationError(
            f"topic listing is not supported by the {bus.transport.name} transport; "
            "name the topics with --topic T (repeatable)"
        ) from None


def _members(info: GroupInfo) -> str:
    """The members' names, or how many there are where the broker does not name them."""
    unnamed = (info.member_count or 0) - len(info.members)
    parts = [*info.members, f"{unnamed} unnamed"] if unnamed > 0 else list(info.members)
    return ",".join(parts) or "-"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


async def _groups(args: argparse.Namespace, out: TextIO) -> int:
    from dotmac.events import create_bus

    from .app import is_dead_letter_topic

    async with create_bus(_url(args)) as bus:
        listing = not args.topic
        topics = await _all_topics(bus) if listing else list(args.topic)
        infos: list[GroupInfo] = []
        for topic in topics:
            found = list(await bus.groups(topic))
            # Listing every topic: one without groups (a dead-letter topic, say) shows too.
            infos += found or ([GroupInfo(topic=topic, group="")] if listing else [])
    if args.json:
        for info in infos:
            record = {
                "topic": info.topic,
                "group": info.group or None,
                "lag": info.lag,
                "pending": info.pending,
                "oldest_pending_age": info.oldest_pending_age,
                "members": list(info.members),
                "member_count": info.member_count,
                "dead_letter": is_dead_letter_topic(info.topic),
            }
            out.write(json.dumps(record) + "\n")
        return 0
    header = ("TOPIC", "GROUP", "LAG", "PENDING", "OLDEST-PENDING-S", "MEMBERS")
    rows = [header] + [
        (
            i.topic + (" (dead letters)" if is_dead_letter_topic(i.topic) else ""),
            i.group or "-",
            _fmt(i.lag) if i.group else "-",
            _fmt(i.pending) if i.group else "-",
            _fmt(i.oldest_pending_age),
            _members(i),
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
        if not args.topic:
            await _all_topics(bus)  # fails now, with the reason, where topics cannot be listed
        server = OpsServer(
            bus,
            host=args.host,
            port=args.port,
            token=token,
            topics=args.topic or None,
            all_topics=not args.topic,
            dlq_topics=args.dlq_topic or None,
            lag_interval=args.interval,
        )
        async with server:
            record = {"ui": server.url, "writable": server.state.writable, "pid": os.getpid()}
            out.write(json.dumps(record) + "\n")
            out.flush()
            await stop.wait()
    return 0


async def _asyncapi(args: argparse.Namespace, out: TextIO) -> int:
    from dotmac.events.app.serve import load_app

    from .asyncapi import asyncapi_document

    app = load_app(args.app, args.app_dir)
    document = asyncapi_document(app, url=args.url, title=args.title, version=args.version)
    if args.format == "yaml":
        import yaml

        out.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    else:
        out.write(json.dumps(document, indent=2) + "\n")
    return 0


def _http_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected [HOST]:PORT, got {text!r}")
    return (host or "0.0.0.0", int(port))  # noqa: S104 - a probe endpoint must be reachable by the kubelet


def attach_http(app: App, host: str, port: int, token: str | None = None) -> None:
    """Serve ``app``'s probes, metrics, page and AsyncAPI document while it runs: the
    server starts once the bus is connected (before intake, so ``/readyz`` is false
    until every subscription is live) and stops after the drain."""
    from .app import OpsServer
    from .asyncapi import asyncapi_document

    holder: dict[str, Any] = {}

    @app.on_startup
    async def _start_ops_server() -> None:
        server = OpsServer(
            app.bus,
            host=host,
            port=port,
            token=token,
            expect_subscriptions=len(app.subscribers),
            asyncapi=asyncapi_document(app),
        )
        await server.start()
        holder["server"] = server
        log.info("ops endpoints of %s on %s", app.name, server.url)

    @app.on_shutdown
    async def _stop_ops_server() -> None:
        server = holder.pop("server", None)
        if server is not None:
            await server.stop()


def _wrap_run(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``--http [HOST]:PORT`` to the core's ``run`` command."""
    run = subparsers.choices.get("run")
    if run is None:
        return
    inner = run.get_default("func")
    run.add_argument(
        "--http",
        type=_http_address,
        metavar="[HOST]:PORT",
        help="serve /healthz, /readyz, /metrics, /asyncapi.json and the ops page (dotmac-events-ops)",
    )

    def run_with_http(args: argparse.Namespace, out: TextIO) -> Any:
        if args.http is not None:
            from dotmac.events.app.serve import load_app

            if len(args.apps) != 1 or args.workers != 1:
                raise ConfigurationError(
                    "--http serves one app in one worker: pass one MODULE:APP and --workers 1"
                )
            host, port = args.http
            # load_app imports the module once: the runner gets this same App object.
            attach_http(load_app(args.apps[0], args.app_dir), host, port, os.environ.get(ENV_TOKEN) or None)
        return inner(args, out)

    run.set_defaults(func=run_with_http)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    _wrap_run(subparsers)
    a = subparsers.add_parser("asyncapi", help="the AsyncAPI 3.0 document of a service app")
    a.add_argument("app", metavar="MODULE:APP", help="e.g. shop.billing:app")
    a.add_argument("--format", choices=("json", "yaml"), default="json")
    a.add_argument("--url", default=None, help="the server to name (default: the app's own URL)")
    a.add_argument("--title", default=None, help="document title (default: the app's name)")
    a.add_argument("--version", default="0.1.0", help="document version (default: 0.1.0)")
    a.add_argument("--app-dir", default=".", help="directory put on sys.path first (default: .)")
    a.set_defaults(func=_asyncapi)

    url_help = f"transport URL (default: ${ENV_URL}, else memory://)"
    g = subparsers.add_parser("groups", help="consumer groups of topics: lag, pending, members")
    g.add_argument("--url", default=None, help=url_help)
    g.add_argument(
        "--topic",
        action="append",
        default=[],
        help="a topic to look at (repeatable; default: every topic of the broker)",
    )
    g.add_argument("--json", action="store_true", help="one JSON object per group and line")
    g.set_defaults(func=_groups)

    u = subparsers.add_parser("ui", help="serve the ops page, probes and metrics for a transport")
    u.add_argument("--url", default=None, help=url_help)
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    u.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    u.add_argument(
        "--topic",
        action="append",
        default=[],
        help="a topic whose groups to show (repeatable; default: every topic of the broker)",
    )
    u.add_argument(
        "--dlq-topic",
        action="append",
        default=[],
        help="a dead-letter topic to browse (repeatable; default: those of the shown topics)",
    )
    u.add_argument("--interval", type=float, default=5.0, help="seconds between lag refreshes for /metrics")
    u.add_argument(
        "--token",
        default=None,
        help=f"enables dead-letter replay for who knows it (default: ${ENV_TOKEN}; read-only without)",
    )
    u.set_defaults(func=_ui)
