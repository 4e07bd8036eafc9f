"""A locked database or a full disk on the webhook path: 503, and nothing half-written.

Both are faults of the SQLite file on this host; PostgreSQL's are those of its server
(tests/test_postgresql.py: the server unreachable)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from sms_bulk_app import create_app
from tests.conftest import load_fixture, sqlite_only

pytestmark = sqlite_only


def rows(settings) -> int:
    with sqlite3.connect(Path(settings["DATA_DIR"]) / "sms_bulk_app.db") as db:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_locked_database_answers_503_and_writes_nothing(settings, moyklass, oneclick):
    settings["DATABASE_TIMEOUT"] = "0.3"
    client = create_app(settings).test_client()
    moyklass.add_user(1001, "381641000001")
    locker = sqlite3.connect(Path(settings["DATA_DIR"]) / "sms_bulk_app.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another program holds the database
    try:
        response = client.post("/webhook", json=load_fixture("sub_lessons_left"))
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert response.status_code == 503
    assert response.get_json() == {"status": "error", "message": "the database is unavailable; try again later"}
    assert rows(settings) == 0 and oneclick.messages == []
    assert client.post("/webhook", json=load_fixture("sub_lessons_left")).status_code == 200


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs: a disk that really fills up. Needs root (CI and `make test` as root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {result.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_full_disk_answers_503_and_keeps_what_was_accepted(settings, moyklass, oneclick, tiny_disk, mode):
    settings.update(DATA_DIR=str(tiny_disk / "data"), WEBHOOK_MODE=mode, DEDUP_SECONDS="0",
                    LOG_FILE_PATH=str(tiny_disk.parent / "app.log"))
    client = create_app(settings).test_client()
    for user_id in range(1, 400):
        moyklass.add_user(user_id, f"38164{1_000_000 + user_id:07d}")

    def post(user_id: int):
        payload = load_fixture("sub_lessons_left")
        payload["object"]["userId"] = user_id
        return client.post("/webhook", json=payload)

    accepted = [post(user_id) for user_id in range(1, 6)]
    assert {r.status_code for r in accepted} == {200 if mode == "sync" else 202}
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(fd)
    answers = [post(user_id) for user_id in range(6, 30)]
    assert 503 in {r.status_code for r in answers}
    failed = next(r for r in answers if r.status_code == 503)
    assert failed.get_json() == {"status": "error", "message": "the database is unavailable; try again later"}
    filler.unlink()
    with sqlite3.connect(Path(settings["DATA_DIR"]) / "sms_bulk_app.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        journaled = {row[0] for row in db.execute("SELECT user_id FROM messages")}
    assert set(range(1, 6)) <= journaled  # what was accepted before the disk filled is there
    answered = {user_id for user_id, r in zip(range(6, 30), answers, strict=True) if r.status_code < 300}
    assert answered <= journaled
    assert post(99).status_code in (200, 202)  # with room again, it works again
