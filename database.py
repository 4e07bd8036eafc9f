"""The two database engines behind store.py, SQLite and PostgreSQL, chosen by DATABASE_URL.

store.py writes its SQL once, in the subset both engines share (`?` placeholders, `RETURNING`,
`ON CONFLICT`), and uses one connection interface: sqlite3's own (`execute`, `executemany`,
`fetchone`, `fetchall`, `rowcount`, rows read by name or position, `dict(row)`). SQLite is used
as it is, with nothing in between on the hot path; PostgreSQL (psycopg 3) goes through
`PostgresConnection`, which turns `?` into psycopg's `%s` and returns rows that read like
sqlite3's. What the engines do differently (opening, locking, claims, migrations) is store.py's
business, asked through `Backend`.
"""
from __future__ import annotations

import functools
import itertools
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import RowMaker

SQLITE, POSTGRESQL = "sqlite", "postgresql"

# Driver errors as store.py catches them, whichever engine raised them.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)


class BadDatabaseUrl(ValueError):
    pass


@dataclass(frozen=True)
class Backend:
    """Where the data lives: `engine` is SQLITE (`path` set) or POSTGRESQL (`url` set)."""

    engine: str
    path: Path | None = None
    url: str | None = field(default=None, repr=False)  # it may hold a password


def parse_database_url(url: str) -> Backend:
    """`sqlite:///absolute/path.db` or `postgresql://user:password@host:port/database`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path or parts.path == "/":
            raise BadDatabaseUrl("a SQLite DATABASE_URL is sqlite:///absolute/path/to/file.db")
        return Backend(SQLITE, path=Path(parts.path))
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.path.strip("/"):
            raise BadDatabaseUrl("a PostgreSQL DATABASE_URL names its database: postgresql://user@host:5432/name")
        return Backend(POSTGRESQL, url=url)
    raise BadDatabaseUrl("DATABASE_URL must start with sqlite:/// or postgresql://")


class Row(tuple):
    """A PostgreSQL row read like sqlite3.Row: by position, by column name, `dict(row)`, `keys()`."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    return _row_class(tuple(column.name for column in cursor.description or ()))


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    """One Row class per set of columns, made once: the store's queries are a few dozen, and a
    class made for every result cost each query about 7 µs and a class object to collect."""
    return type("Row", (Row,), {"_names": {name: index for index, name in enumerate(names)}, "__slots__": ()})


_QMARK = re.compile(r"\?")
_STREAMS = itertools.count()  # names of server-side cursors


def _pyformat(sql: str) -> str:
    """`?` placeholders as psycopg's `%s`; a literal `%` doubled so psycopg leaves it alone."""
    return _QMARK.sub("%s", sql.replace("%", "%%"))


class PostgresConnection:
    """A psycopg connection with the sqlite3 interface store.py uses. Autocommit, so that
    `BEGIN` and `COMMIT` are store.py's to send, as they are with SQLite."""

    def __init__(self, url: str, connect_timeout: float):
        self._connection = psycopg.connect(url, autocommit=True, row_factory=_row_factory,
                                           connect_timeout=max(int(connect_timeout), 1))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Row]:
        return self._connection.execute(_pyformat(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Row]:
        cursor = self._connection.cursor()
        cursor.executemany(_pyformat(sql), list(rows))
        return cursor

    def stream(self, sql: str, params: Sequence[Any] = (), batch: int = 5000) -> Iterator[Row]:
        """The rows of a query read `batch` at a time through a server-side cursor, where execute
        would load them all into memory; inside a transaction, which the cursor lives in."""
        with self._connection.cursor(name=f"stream_{next(_STREAMS)}") as cursor:
            cursor.itersize = batch
            cursor.execute(_pyformat(sql), params)
            yield from cursor

    @property
    def usable(self) -> bool:
        """Still connected: a broken connection cannot even roll back."""
        return not self._connection.closed and not self._connection.broken

    @property
    def in_transaction(self) -> bool:
        return self._connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self._connection.close()
