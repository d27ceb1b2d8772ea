"""``dotmac-events outbox ...``: run the relay, create the table, show what is pending."""

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

from .outbox import DEFAULT_TABLE

__all__ = ["ENV_DB", "register"]

log = logging.getLogger(__name__)

ENV_DB = "DOTMAC_EVENTS_OUTBOX_DB"
"""The DSN used when ``--db`` is not given (keeps a password out of the process list)."""


def _db(args: argparse.Namespace) -> str:
    db: str | None = args.db or os.environ.get(ENV_DB)
    if not db:
        raise ConfigurationError(f"no database: pass --db DSN or set ${ENV_DB}")
    return db


async def _relay(args: argparse.Namespace, out: TextIO) -> int:
    import asyncpg

    from .outbox import Outbox
    from .relay import OutboxRelay

    db = _db(args)
    if args.install:
        conn = await asyncpg.connect(db)
        try:
            await Outbox(schema=args.schema, table=args.table).install(conn)
        finally:
            await conn.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    relay = OutboxRelay(
        db,
        args.url or os.environ.get(ENV_URL) or None,
        schema=args.schema,
        table=args.table,
        batch_size=args.batch_size,
        max_buckets=args.max_buckets,
        poll_interval=args.poll_interval,
        retention=args.retention,
        listen=not args.no_listen,
    )
    async with relay:
        out.write(json.dumps({"relay": "started", "table": relay.name.text, "pid": os.getpid()}) + "\n")
        out.flush()
        await stop.wait()
    stats = relay.stats
    out.write(
        json.dumps(
            {"relay": "stopped", "sent": stats.sent, "batches": stats.batches, "failures": stats.failures}
        )
        + "\n"
    )
    return 0


async def _install(args: argparse.Namespace, out: TextIO) -> int:
    import asyncpg

    from ._sql import TableName, inbox_ddl
    from .outbox import Outbox, install

    conn = await asyncpg.connect(_db(args))
    try:
        await Outbox(schema=args.schema, table=args.table).install(conn)
        out.write(json.dumps({"installed": f"{args.schema}.{args.table}"}) + "\n")
        if args.inbox_table:
            inbox = TableName(args.schema, args.inbox_table)
            await install(conn, inbox, inbox_ddl(inbox))
            out.write(json.dumps({"installed": inbox.text}) + "\n")
    finally:
        await conn.close()
    return 0


async def _status(args: argparse.Namespace, out: TextIO) -> int:
    import asyncpg

    from ._sql import TableName

    name = TableName(args.schema, args.table)
    conn = await asyncpg.connect(_db(args))
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE sent_at IS NULL) AS pending, "  # noqa: S608 - quoted name
            "count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent, "
            "count(*) FILTER (WHERE sent_at IS NULL AND attempts > 0) AS failing, "
            "min(created_at) FILTER (WHERE sent_at IS NULL) AS oldest_pending "
            f"FROM {name.sql}"
        )
    finally:
        await conn.close()
    assert row is not None
    record = dict(row)
    oldest = record["oldest_pending"]
    record["oldest_pending"] = oldest.isoformat() if oldest is not None else None
    out.write(json.dumps({"table": name.text, **record}) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``outbox relay``, ``outbox install`` and ``outbox status`` to the CLI."""
    outbox = subparsers.add_parser("outbox", help="transactional outbox on PostgreSQL")
    commands = outbox.add_subparsers(dest="outbox_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", help=f"PostgreSQL DSN (default ${ENV_DB})")
        p.add_argument("--schema", default="public")
        p.add_argument("--table", default=DEFAULT_TABLE)

    relay = commands.add_parser("relay", help="send committed outbox rows to an event bus until stopped")
    common(relay)
    relay.add_argument("--url", help=f"event bus URL (default ${ENV_URL} or memory://)")
    relay.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    relay.add_argument("--max-buckets", type=int, default=32, help="ordering buckets one batch takes")
    relay.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    relay.add_argument(
        "--retention", type=float, default=86400.0, help="seconds to keep sent rows (0 deletes at once)"
    )
    relay.add_argument("--no-listen", action="store_true", help="poll only, no LISTEN/NOTIFY")
    relay.add_argument("--install", action="store_true", help="create the table first if missing")
    relay.set_defaults(func=_relay)

    install = commands.add_parser("install", help="create the outbox (and inbox) tables if missing")
    common(install)
    install.add_argument("--inbox-table", help="also create this inbox table")
    install.set_defaults(func=_install)

    status = commands.add_parser("status", help="count pending, sent and failing rows")
    common(status)
    status.set_defaults(func=_status)
