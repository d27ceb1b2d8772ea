from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from dotmac.events.cli import main

pytest.importorskip("dotmac_events_memory")


def test_demo_summary_accounts_for_every_order() -> None:
    out = io.StringIO()
    code = main(["demo", "--orders", "600", "--workers", "3", "--json"], out=out)
    summary = json.loads(out.getvalue())
    assert code == 0
    assert summary["published"] == 600
    assert summary["lost"] == 0
    assert summary["dead_lettered"] == summary["expected_dead_lettered"] == 12
    assert summary["processed"] == 588
    assert summary["retried"] == 60
    assert summary["duplicates"] == 0


def test_demo_leaves_the_package_log_level_as_it_found_it() -> None:
    package_log = logging.getLogger("dotmac.events")
    before = package_log.level
    assert main(["demo", "--orders", "50", "--json"], out=io.StringIO()) == 0
    assert package_log.level == before


def test_demo_table() -> None:
    out = io.StringIO()
    assert main(["demo", "--orders", "100"], out=out) == 0
    text = out.getvalue()
    assert "| lost" in text and "| published     | 100" in text


def test_plugins_lists_memory() -> None:
    out = io.StringIO()
    assert main(["plugins"], out=out) == 0
    names = {info["name"]: info for info in json.loads(out.getvalue())}
    assert names["memory"]["transports"] == ["memory"]
    assert "dotmac_events_register_transports" in names["memory"]["hooks"]


def test_publish_and_dlq_commands(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert (
        main(
            ["publish", "orders", "--payload", '{"id": 1}', "--count", "2", "--url", "memory://cli"], out=out
        )
        == 0
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2 and all(line["topic"] == "orders" for line in lines)
    out = io.StringIO()
    assert main(["dlq", "list", "orders.dlq", "--url", "memory://cli"], out=out) == 0
    assert out.getvalue() == ""  # memory:// lives in this process only
    assert main(["publish", "bad topic", "--url", "memory://cli"], out=io.StringIO()) == 2
    assert "topic" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    # `dotmac-events plugins | head -0`: the reader is gone before anything is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from dotmac.events.cli import main; sys.exit(main(['plugins']))",
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert b"Traceback" not in done.stderr


def test_publish_to_memory_says_no_one_receives_it(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["publish", "orders", "--url", "memory://cli-note"], out=out) == 0
    assert json.loads(out.getvalue())["topic"] == "orders"  # stdout stays JSON lines
    err = capsys.readouterr().err
    assert "in-process transport" in err and "no other process receives" in err


def test_consume_with_a_group_says_it_takes_the_groups_events(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["consume", "orders", "--group", "billing", "--max", "1", "--timeout", "0.2", "--url", "memory://c"],
        out=io.StringIO(),
    )
    err = capsys.readouterr().err
    assert "joining consumer group 'billing'" in err and "acknowledged" in err
    assert "in-process transport" in err
    # --max 1 was not reached before --timeout: a script can tell from the exit code.
    assert code == 1
    assert "with 0 of 1 event(s)" in err


def test_consume_without_max_ends_cleanly_at_its_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["consume", "orders", "--timeout", "0.2", "--url", "memory://c2"], out=io.StringIO()) == 0
    assert "joining consumer group" not in capsys.readouterr().err


def test_demo_table_fits_a_long_url() -> None:
    out = io.StringIO()
    url = "memory://" + "a-rather-long-bus-name-" * 3
    assert main(["demo", "--orders", "20", "--url", url], out=out) == 0
    table = [line for line in out.getvalue().splitlines() if line.startswith(("|", "+"))]
    assert url in out.getvalue()
    assert len({len(line) for line in table}) == 1, table
