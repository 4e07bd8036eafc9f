"""A throwaway PostgreSQL server for the tests: one cluster per session, one fresh database per test.

The cluster lives in a temporary directory, listens on 127.0.0.1 (a free port) and on a unix socket in that
directory, trusts every local connection and trades durability for speed. PostgreSQL refuses to run as root,
so when the tests run as root, initdb and pg_ctl run as Debian's `postgres` user (else `nobody`).
"""
from __future__ import annotations

import os
import pwd
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql

DEBIAN_ROOT = Path("/usr/lib/postgresql")
USER = "smsbulkapp"
MISSING_REASON = ("PostgreSQL is not installed (no initdb): the PostgreSQL tests are skipped; "
                  "`make test` as root installs it")
# Throwaway: nothing needs to survive a crash. Several gunicorn + worker processes may connect at once.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin, (9, 6) for .../9.6/bin: the newest sorts last."""
    return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())


def find_bin_dir(search_path: str | None = None, debian_root: Path = DEBIAN_ROOT) -> Path | None:
    """The directory with both initdb and pg_ctl: from PATH (`search_path`), else Debian's newest, else None."""
    on_path = shutil.which("initdb", path=search_path)
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(debian_root.glob("*/bin"), key=_version_key, reverse=True)
    for bin_dir in candidates:
        if all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl")):
            return bin_dir
    return None


def postgres_missing() -> NoReturn:
    """Skip the test, or fail it in CI (CI must not silently skip the PostgreSQL tests)."""
    if os.environ.get("CI"):
        pytest.fail(MISSING_REASON, pytrace=False)
    pytest.skip(MISSING_REASON)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    """A running cluster; `url` is the base URL, a database's URL is `url` + its name."""

    bin_dir: Path
    base_dir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = USER

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/"

    def database_url(self, name: str) -> str:
        return self.url + name

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url("postgres"), autocommit=True)

    def create_database(self, name: str, template: str = "template0") -> str:
        """Create a database, empty or a copy of `template`, and return its URL."""
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                         sql.Identifier(template)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database even while clients are still connected to it."""
        with self._admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _run_as_owner(args: list[str], cwd: Path) -> None:
    """Run a PostgreSQL program, as an unprivileged user when we are root; raise with its output if it fails."""
    as_user: dict = {}
    if os.geteuid() == 0:
        owner = _unprivileged_user()
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    # A clean environment: PG* variables of the caller must not steer the throwaway cluster.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, **as_user)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


def start_server(bin_dir: Path) -> PostgresServer:
    """initdb a cluster in a new temporary directory and start it; the caller stops it with `stop_server`."""
    server = PostgresServer(bin_dir=bin_dir, base_dir=Path(tempfile.mkdtemp(prefix="smsbulkapp-pg-")),
                            port=_free_port())
    try:
        if os.geteuid() == 0:
            owner = _unprivileged_user()
            os.chown(server.base_dir, owner.pw_uid, owner.pw_gid)
        _run_as_owner([str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", USER, "--auth=trust",
                       "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"], cwd=server.base_dir)
        settings = SETTINGS | {"port": str(server.port), "unix_socket_directories": str(server.socket_dir)}
        with open(server.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())
        try:
            _run_as_owner([str(bin_dir / "pg_ctl"), "start", "-D", str(server.data_dir), "-l", str(server.log_path),
                           "-w", "-t", "30"], cwd=server.base_dir)
        except RuntimeError as error:  # pg_ctl only says "Examine the log output": show it
            raise RuntimeError(f"{error}\n{server.log_path.read_text(errors='replace')}") from None
    except BaseException:
        if (server.data_dir / "postmaster.pid").exists():  # started, but pg_ctl gave up waiting for it
            with suppress(Exception):
                stop_server(server)
        shutil.rmtree(server.base_dir, ignore_errors=True)
        raise
    return server


def stop_server(server: PostgresServer) -> None:
    """Stop at once (nothing needs to be flushed) and remove the cluster."""
    try:
        _run_as_owner([str(server.bin_dir / "pg_ctl"), "stop", "-D", str(server.data_dir), "-m", "immediate", "-w"],
                      cwd=server.base_dir)
    finally:
        shutil.rmtree(server.base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session; skipped (failed in CI) when PostgreSQL is not installed."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        postgres_missing()
    server = start_server(bin_dir)
    yield server
    stop_server(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database for one test; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


class MigratedDatabases:
    """Fresh copies of a database migrated once (CREATE DATABASE ... TEMPLATE: a third of the time
    of migrating an empty one), made ahead on a thread of their own while the tests run, and
    dropped on another after use: a test on PostgreSQL waits for neither."""

    AHEAD = 2

    def __init__(self, server: PostgresServer):
        from store_postgresql import PostgresStore

        self.server = server
        store = PostgresStore(server.create_database("migrated_template"))
        store.initialize()
        store.connection().close()  # a template is copied only while no one is connected to it
        self._ready: queue.Queue[str | Exception] = queue.Queue(maxsize=self.AHEAD)
        self._used: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._make, daemon=True).start()
        threading.Thread(target=self._drop, daemon=True).start()

    def take(self) -> str:
        """The URL of a database no test has used."""
        made = self._ready.get()
        if isinstance(made, Exception):
            self._ready.put(made)  # the next test is told too
            raise made
        return self.server.database_url(made)

    def give_back(self, url: str) -> None:
        self._used.put(url.rsplit("/", 1)[1])

    def _make(self) -> None:
        while True:
            name = f"test_{uuid.uuid4().hex[:16]}"
            try:
                self.server.create_database(name, "migrated_template")
            except Exception as error:  # the server stopped at the session's end, or broke
                self._ready.put(error)
                return
            self._ready.put(name)

    def _drop(self) -> None:
        while True:
            name = self._used.get()
            with suppress(Exception):  # the server stopped at the session's end: it took them all
                self.server.drop_database(name)


@pytest.fixture(scope="session")
def migrated_databases(postgres_server: PostgresServer) -> MigratedDatabases:
    return MigratedDatabases(postgres_server)


@pytest.fixture
def migrated_postgres_url(migrated_databases: MigratedDatabases) -> Iterator[str]:
    """The URL of a fresh database for one test, already migrated; dropped afterwards."""
    url = migrated_databases.take()
    yield url
    migrated_databases.give_back(url)
