"""The outbox on a real PostgreSQL server: what several hosts on one database rely on.

Every test that keeps data also runs on PostgreSQL (tests/conftest.py); these are about what
only several processes or hosts on one PostgreSQL database show.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

import api_keys
import clients
from locks import WouldWait
from models import ClientCreate
from sms_bulk_app import create_app
from store import MIGRATIONS, SENDING, SENT, run_script
from store_postgresql import POSTGRES_MIGRATIONS, PostgresStore
from tests.conftest import ROOT, load_fixture, run_command, settings_store


def queued_store(url: str, count: int) -> PostgresStore:
    store = PostgresStore(url)
    store.initialize()
    store.enqueue_many("test", 3600, [("+381641000001", f"Poruka {i}", None, None) for i in range(count)])
    return store


def test_a_webhook_is_sent_and_kept_on_postgresql(settings, postgres_url, oneclick, moyklass):
    moyklass.add_user(1001, "381641000001")
    settings["DATABASE_URL"] = postgres_url
    response = create_app(settings).test_client().post("/webhook", json=load_fixture("sub_lessons_left"))
    assert response.get_json() == {"status": "success", "id": 1}
    message = settings_store(settings).message(1)
    assert (message["status"], message["phone"], len(oneclick.messages)) == (SENT, "+381641000001", 1)


def test_workers_claiming_at_once_take_each_message_once(postgres_url):
    """8 workers (a store each: connections of their own, as hosts have) claim 2,000 messages in
    batches of 50 at the same time. Without SKIP LOCKED, a claim that waited for another's row
    lock would take that row too once it was SENDING (a lease may be taken over from SENDING)."""
    queued_store(postgres_url, 2000)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(owner: int) -> None:
        store = PostgresStore(postgres_url)
        while rows := store.claim(f"worker-{owner}", 50, 600):
            with lock:
                claimed.extend(row["id"] for row in rows)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert len(claimed) == 2000 and Counter(claimed).most_common(1)[0][1] == 1
    assert PostgresStore(postgres_url).counts()[SENDING] == 2000


def test_the_same_webhook_reaching_many_hosts_at_once_is_kept_once(settings, postgres_url):
    """16 hosts (an app each) accept the same webhook at the same moment: one message, 15 duplicates."""
    settings["DATABASE_URL"] = postgres_url
    apps = [create_app(settings | {"WEBHOOK_MODE": "async"}) for _ in range(16)]
    start = threading.Barrier(16)

    def post(app) -> dict:
        client = app.test_client()
        start.wait()
        return client.post("/webhook", json=load_fixture("sub_lessons_left")).get_json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, apps))
    assert sorted(a.get("duplicate", False) for a in answers) == [False] + [True] * 15
    assert {a["id"] for a in answers} == {1}
    assert sum(settings_store(settings).counts().values()) == 1


def test_hosts_starting_together_migrate_once(postgres_url):
    stores = [PostgresStore(postgres_url) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda store: store.initialize(), stores))
    version = stores[0].connection().execute("SELECT version FROM schema_version").fetchall()
    assert [row[0] for row in version] == [len(MIGRATIONS)]
    assert len(POSTGRES_MIGRATIONS) == len(MIGRATIONS)  # a migration is written for both databases


def test_migration_9_counts_the_messages_a_database_had_before_it(postgres_url):
    """A database of the release before the counters (version 8) upgrades with its mailings counted."""
    store = PostgresStore(postgres_url)
    with store.transaction() as db:
        run_script(db, "CREATE TABLE schema_version (version BIGINT NOT NULL); INSERT INTO schema_version VALUES (8)")
        for migration in filter(None, POSTGRES_MIGRATIONS[:8]):
            run_script(db, migration)
        db.execute("INSERT INTO mailings (id, created_at, updated_at, start_at, end_at, text, filter, state)"
                   " VALUES (3, 1, 1, 1, 2, 'Zdravo', '{}', 'started')")
        db.executemany("INSERT INTO messages (created_at, updated_at, source, status, next_attempt_at, deadline,"
                       " mailing_id, client_id, segments, sent_at) VALUES (1, 1, 'mailing', ?, 1, 2, 3, ?, ?, ?)",
                       [(SENT, 1, 2, 5.0), (SENT, 2, 1, 7.0), ("FAILED", 3, None, None), ("QUEUED", 4, None, None)])
    store.initialize()
    progress = store.mailing_progress(3)
    assert (progress.counts, progress.segments, progress.first_sent_at, progress.last_sent_at) == (
        {SENT: 2, "FAILED": 1, "QUEUED": 1}, 3, 5.0, 7.0)


def test_a_postgresql_that_cannot_be_reached_stops_the_start_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "sms_bulk_app.py"), "status"], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "data"),
                                 "DATABASE_URL": "postgresql://sms:pg-s3cret@127.0.0.1:1/sms"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("SMSBulkApp cannot start: PostgreSQL cannot be reached (")
    assert "Traceback" not in result.stderr and "pg-s3cret" not in result.stderr


def test_a_rate_limit_holds_for_all_hosts_together(postgres_url):
    """Two hosts (a store each) send as fast as a shared 50/s allows for 3 s: 150 calls, not 300."""
    PostgresStore(postgres_url).initialize()
    calls: list[float] = []
    lock = threading.Lock()
    until = time.monotonic() + 3.0

    def host() -> None:
        limiter = PostgresStore(postgres_url).rate_limiter("oneclick", 50, ROOT)
        while time.monotonic() < until:
            limiter.wait()
            with lock:
                calls.append(time.monotonic())

    with ThreadPoolExecutor(4) as pool:  # two hosts of two threads each
        list(pool.map(lambda _: host(), range(4)))
    in_window = [t for t in calls if t < until]
    assert 150 * 0.95 <= len(in_window) <= 150 * 1.05 + 1, len(in_window)


def test_a_rate_limit_wait_past_the_deadline_takes_nothing(postgres_url):
    PostgresStore(postgres_url).initialize()
    limiter = PostgresStore(postgres_url).rate_limiter("moyklass", 0.5, ROOT)  # a slot every 2 s
    limiter.wait()  # the first slot is now; the next one is 2 s away
    with pytest.raises(WouldWait):
        limiter.wait(time.monotonic() + 0.5)
    started = time.monotonic()
    limiter.wait()  # the refused wait took no slot: this one waits 2 s, not 4
    assert 1.5 < time.monotonic() - started < 2.5


def test_send_slots_are_shared_by_all_hosts_and_freed_with_a_dead_hosts_connection(postgres_url):
    PostgresStore(postgres_url).initialize()
    holding, most = 0, 0
    lock = threading.Lock()

    def send(_: int) -> None:
        nonlocal holding, most
        with PostgresStore(postgres_url).send_slots("oneclick", 3, ROOT).hold(time.monotonic() + 10):
            with lock:
                holding += 1
                most = max(most, holding)
            time.sleep(0.05)
            with lock:
                holding -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(24)))
    assert most == 3
    holder = subprocess.Popen(  # a host holding the only slot of a limit of 1, then killed -9
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from store_postgresql import PostgresStore;"
         " held = PostgresStore(sys.argv[1]).send_slots('oneclick', 1, Path('.')).hold(); held.__enter__();"
         " print('held', flush=True); time.sleep(60)", postgres_url],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        other = PostgresStore(postgres_url).send_slots("oneclick", 1, ROOT)
        with pytest.raises(WouldWait):
            with other.hold(time.monotonic() + 0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with other.hold(time.monotonic() + 5):  # its connection closed with it: the slot is free
        pass


def test_hosts_share_one_moyklass_token_through_the_database(settings, postgres_url, moyklass, oneclick, tmp_path):
    """Two hosts (their own DATA_DIR, no shared file): one token fetched between them, no token file."""
    settings["DATABASE_URL"] = postgres_url
    for n in (1, 2):
        moyklass.add_user(1000 + n, f"38164100000{n}")
        host = create_app(settings | {"DATA_DIR": str(tmp_path / f"host{n}")}).test_client()
        payload = load_fixture("sub_lessons_left")
        payload["object"]["userId"] = 1000 + n
        assert host.post("/webhook", json=payload).status_code == 200
    assert (moyklass.token_calls, len(oneclick.messages)) == (1, 2)
    assert not any((tmp_path / f"host{n}" / "token.json").exists() for n in (1, 2))


def test_migrate_db_copies_a_sqlite_deployment_with_its_ids_and_counts(settings, postgres_url, moyklass, oneclick):
    """Webhooks, a client with tags, an API key, a gap in the ids: all copied, ids kept, and the
    next id after the highest; the service then runs on PostgreSQL where it stopped."""
    moyklass.add_user(1001, "381641000001")
    app = create_app(settings)
    client = app.test_client()
    assert client.post("/webhook", json=load_fixture("sub_lessons_left")).status_code == 200
    store = app.extensions["sms_bulk_app"].store
    store.enqueue_many("test", 3600, [("+381641000002", f"Poruka {i}", None, None) for i in range(5)])
    store.connection().execute("DELETE FROM messages WHERE id = 3")  # a gap, as deletions leave
    api_keys.create(store, "ops", ["read"], None)
    clients.create(store, ClientCreate(phone="0641000009", name="Ana", tags=["robotika", "pon"]), "Europe/Belgrade")
    result = run_command(settings, "migrate-db", "--to", postgres_url)
    assert result.returncode == 0, result.stderr
    assert "messages                   5 copied,         5 in PostgreSQL" in result.stdout
    moved = settings_store(settings | {"DATABASE_URL": postgres_url})
    assert [moved.message(i) is not None for i in range(1, 8)] == [True, True, False, True, True, True, False]
    assert moved.message(1)["status"] == SENT and moved.client(1)["tags"] == ["pon", "robotika"]
    assert moved.enqueue("test", 60, phone="+381641000003", text="next") == 7
    again = run_command(settings, "migrate-db", "--to", postgres_url)
    assert (again.returncode, again.stderr) == (
        1, "migrate-db: the PostgreSQL database is not empty: migrate-db copies into an empty one\n")
