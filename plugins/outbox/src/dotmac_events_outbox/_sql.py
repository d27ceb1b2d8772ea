"""Table names and the SQL of the outbox and inbox tables.

Names are validated and quoted once, when an :class:`Outbox` or inbox is built, so
every statement can be formatted from them without any user text reaching SQL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from attrs import frozen

from dotmac.events.errors import ConfigurationError

__all__ = ["BUCKETS", "TableName", "describe_dsn"]

# Rows are spread over this many ordering buckets by a hash of their key (or, without
# a key, their topic). Part of the schema: publishers and relays of one table must
# agree on it, so it is a constant, not a setting.
BUCKETS = 256

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _check(value: str, what: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be a PostgreSQL identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 "
            f"characters), got {value!r}"
        )
    return value


@frozen
class TableName:
    """A schema-qualified table name, validated; ``sql`` is its quoted form."""

    schema: str
    table: str

    def __attrs_post_init__(self) -> None:
        _check(self.schema, "schema")
        _check(self.table, "table")

    @property
    def sql(self) -> str:
        return f'"{self.schema}"."{self.table}"'

    def derived(self, suffix: str) -> str:
        """A quoted name for an index or constraint of this table (kept under 63 bytes)."""
        return f'"{(self.table + "_" + suffix)[:63]}"'

    @property
    def text(self) -> str:
        return f"{self.schema}.{self.table}"


def outbox_ddl(name: TableName) -> list[str]:
    t = name.sql
    return [
        f'CREATE SCHEMA IF NOT EXISTS "{name.schema}"',
        f"""CREATE TABLE IF NOT EXISTS {t} (
            id bigserial PRIMARY KEY,
            event_id text NOT NULL,
            topic text NOT NULL,
            key text,
            headers jsonb NOT NULL,
            value bytea NOT NULL,
            bucket integer GENERATED ALWAYS AS (hashtext(coalesce(key, topic)) & {BUCKETS - 1}) STORED,
            created_at timestamptz NOT NULL DEFAULT now(),
            sent_at timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            last_error text
        )""",
        f"CREATE INDEX IF NOT EXISTS {name.derived('pending')} ON {t} (bucket, id) WHERE sent_at IS NULL",
        f"CREATE INDEX IF NOT EXISTS {name.derived('sent')} ON {t} (sent_at) WHERE sent_at IS NOT NULL",
    ]


def inbox_ddl(name: TableName) -> list[str]:
    t = name.sql
    return [
        f'CREATE SCHEMA IF NOT EXISTS "{name.schema}"',
        f"""CREATE TABLE IF NOT EXISTS {t} (
            consumer_group text NOT NULL,
            event_id text NOT NULL,
            handled_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, event_id)
        )""",
        f"CREATE INDEX IF NOT EXISTS {name.derived('handled')} ON {t} (handled_at)",
    ]


def describe_dsn(dsn: str) -> str:
    """Scheme, host, port and database of a DSN, for logs: no user info, no query
    (which may hold ``password=``). A DSN that is not a URL is shown as ``<dsn>``."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<dsn>"
    if not parts.scheme or "://" not in dsn:
        return "<dsn>"
    return f"{parts.scheme}://{host}{port}{parts.path}"
