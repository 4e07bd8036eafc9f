"""The throwaway PostgreSQL server of tests/postgres.py is real: transactions, row locks, separate databases."""
from __future__ import annotations

import psycopg
import pytest

from tests.postgres import MISSING_REASON, PostgresServer, find_bin_dir, postgres_missing


def test_a_committed_row_is_seen_by_another_connection(postgres_url):
    with psycopg.connect(postgres_url) as writer, psycopg.connect(postgres_url) as reader:
        writer.execute("CREATE TABLE outbox (id integer PRIMARY KEY, phone text NOT NULL)")
        writer.execute("INSERT INTO outbox VALUES (1, '+79990000001')")
        writer.commit()
        assert reader.execute("SELECT id, phone FROM outbox").fetchall() == [(1, "+79990000001")]


def test_skip_locked_passes_over_a_row_another_connection_holds(postgres_url):
    with psycopg.connect(postgres_url) as first, psycopg.connect(postgres_url) as second:
        first.execute("CREATE TABLE outbox (id integer PRIMARY KEY)")
        first.execute("INSERT INTO outbox VALUES (1), (2)")
        first.commit()
        first.execute("SELECT id FROM outbox WHERE id = 1 FOR UPDATE")  # held until `first` ends its transaction
        claim = "SELECT id FROM outbox ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        assert second.execute(claim).fetchall() == [(2,)]
        assert second.execute("SELECT id FROM outbox WHERE id = 1 FOR UPDATE SKIP LOCKED").fetchall() == []
        first.rollback()
        second.rollback()
        assert second.execute(claim).fetchall() == [(1,)]


def test_each_test_database_is_separate(postgres_server: PostgresServer, postgres_url):
    other_url = postgres_server.create_database("test_separate_other")
    try:
        assert other_url != postgres_url
        with psycopg.connect(postgres_url, autocommit=True) as one:
            one.execute("CREATE TABLE only_here (id integer)")
            assert one.execute("SELECT to_regclass('only_here')").fetchone() == ("only_here",)
        with psycopg.connect(other_url, autocommit=True) as other:
            assert other.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
    finally:
        postgres_server.drop_database("test_separate_other")


def test_the_server_listens_on_loopback_and_its_own_socket_only(postgres_server: PostgresServer, postgres_url):
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(postgres_server.socket_dir),)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(host=str(postgres_server.socket_dir), port=postgres_server.port,
                         user=postgres_server.user, dbname=dbname) as over_socket:
        assert over_socket.execute("SELECT current_database()").fetchone() == (dbname,)


def test_without_initdb_the_tests_skip_with_one_line_and_fail_in_ci(tmp_path, monkeypatch):
    assert find_bin_dir(search_path=str(tmp_path), debian_root=tmp_path) is None
    outcomes = (pytest.skip.Exception, pytest.fail.Exception)  # caught both ways, so a wrong one fails this test
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(outcomes) as skipped:
        postgres_missing()
    assert (skipped.type, str(skipped.value)) == (pytest.skip.Exception, MISSING_REASON)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(outcomes) as failed:
        postgres_missing()
    assert (failed.type, str(failed.value)) == (pytest.fail.Exception, MISSING_REASON)


def test_the_newest_debian_version_is_found_when_initdb_is_not_on_path(tmp_path):
    for version in ("9.6", "15", "13"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("initdb", "pg_ctl"):
            (bin_dir / name).write_text("#!/bin/sh\n")
            (bin_dir / name).chmod(0o755)
    assert find_bin_dir(search_path=str(tmp_path / "empty"), debian_root=tmp_path) == tmp_path / "15" / "bin"
