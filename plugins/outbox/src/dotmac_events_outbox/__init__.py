"""dotmac-events-outbox: the transactional outbox and the idempotent inbox on PostgreSQL.

- :class:`Outbox` writes events in the caller's database transaction;
  :class:`OutboxRelay` (or ``dotmac-events outbox relay``) sends committed rows to any
  transport, in order per key.
- :func:`idempotent` and :class:`PostgresInbox` skip events a consumer group handled
  already; ``PostgresInbox.transactional`` commits the handler's writes and the
  record together.

This module holds the plugin's hook implementation and its public names.
"""

from __future__ import annotations

import argparse
from typing import Any

from dotmac.events import hookimpl

from . import cli
from .inbox import InboxStore, MemoryInboxStore, PostgresInbox, idempotent
from .outbox import DEFAULT_TABLE, Outbox, TransactionRequiredError
from .relay import OutboxRelay, RelayStats

__all__ = [
    "DEFAULT_TABLE",
    "InboxStore",
    "MemoryInboxStore",
    "Outbox",
    "OutboxRelay",
    "PostgresInbox",
    "RedisInboxStore",
    "RelayStats",
    "TransactionRequiredError",
    "idempotent",
]


def __getattr__(name: str) -> Any:
    # The Redis store imports redis-py, an optional extra: only on first use.
    if name == "RedisInboxStore":
        from .redis_inbox import RedisInboxStore

        return RedisInboxStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def dotmac_events_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    cli.register(subparsers)
