"""``dotmac-events outbox ...`` through the core's CLI and the plugin's command hook."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import asyncpg
import pytest

from dotmac.events import Event
from dotmac.events.cli import build_parser, main
from dotmac_events_outbox import Outbox


def test_help_lists_the_outbox_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert "outbox" in build_parser().format_help()
    with pytest.raises(SystemExit):
        main(["outbox", "relay", "--help"])
    relay_help = capsys.readouterr().out
    assert "--db" in relay_help and "--url" in relay_help and "--retention" in relay_help


def test_install_then_status(pg_dsn: str, table: str) -> None:
    out = io.StringIO()
    args = ["outbox", "install", "--db", pg_dsn, "--table", table, "--inbox-table", f"{table}_in"]
    assert main(args, out=out) == 0
    assert [json.loads(line)["installed"] for line in out.getvalue().splitlines()] == [
        f"public.{table}",
        f"public.{table}_in",
    ]

    async def write() -> None:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(pg_dsn)
        try:
            async with conn.transaction():
                await Outbox(table=table).publish_many(conn, [Event(topic="t", payload={}) for _ in range(3)])
        finally:
            await conn.close()

    asyncio.run(write())
    out = io.StringIO()
    assert main(["outbox", "status", "--db", pg_dsn, "--table", table], out=out) == 0
    status = json.loads(out.getvalue())
    assert (status["pending"], status["sent"], status["failing"]) == (3, 0, 0)
    assert status["oldest_pending"] is not None


def test_a_missing_database_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("DOTMAC_EVENTS_OUTBOX_DB", raising=False)
    assert main(["outbox", "status"], out=io.StringIO()) == 2
    assert "--db" in capsys.readouterr().err
