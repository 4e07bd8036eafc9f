"""Schema upgrades in place, and ids that are never given out twice."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import api_keys
from sms_bulk_app import create_app
from store import MIGRATIONS, Store


def previous_release_database(path: Path) -> None:
    """A database as the previous release left it: schema version 2, a row in every table."""
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO clients (id, phone, operator_code, timezone, name, created_at)"
               " VALUES (7, '+381641000007', '64', 'Europe/Belgrade', 'Ana', 1)")
    db.execute("INSERT INTO client_tags (tag, client_id) VALUES ('robotika', 7)")
    db.execute("INSERT INTO mailings (id, created_at, updated_at, start_at, end_at, text, filter, state)"
               " VALUES (3, 1, 1, 1, 2, 'Zdravo', '{\"all\": true}', 'started')")
    db.execute("INSERT INTO messages (id, created_at, updated_at, source, status, next_attempt_at, deadline,"
               " mailing_id, client_id) VALUES (12, 1, 1, 'mailing', 'SENT', 1, 2, 3, 7)")
    db.execute("INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES (2, 'old', 'h', 'read', 1)")
    db.close()


def test_a_database_of_the_previous_release_upgrades_in_place_keeping_every_row(tmp_path):
    path = tmp_path / "sms_bulk_app.db"
    previous_release_database(path)
    store = Store(path)
    store.initialize()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("SELECT tag, client_id FROM client_tags").fetchall() == [("robotika", 7)]
    assert db.execute("SELECT id, mailing_id, client_id, unknown_outcomes FROM messages").fetchall() == [(12, 3, 7, 0)]
    assert [row[0] for row in db.execute("SELECT id FROM mailings")] == [3]
    assert [row[0] for row in db.execute("SELECT id FROM api_keys")] == [2]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert store.mailing_progress(3).counts == {"SENT": 1}  # migration 9 counted the messages there were
    store.initialize()  # a second start changes nothing
    assert db.execute("SELECT count(*) FROM client_tags").fetchone()[0] == 1


def test_ids_of_deleted_rows_are_never_given_out_again(settings):
    app = create_app(settings)
    store = app.extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "test", list(api_keys.SCOPES), None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    mailing = {"start_at": "2099-01-01T09:00:00+01:00", "end_at": "2099-01-02T09:00:00+01:00",
               "text": "Zdravo", "filter": {"all": True}}
    first = client.post("/api/v1/mailings", headers=headers, json=mailing).get_json()["id"]
    assert client.delete(f"/api/v1/mailings/{first}", headers=headers).status_code == 204
    assert client.post("/api/v1/mailings", headers=headers, json=mailing).get_json()["id"] == first + 1
    made = client.post("/api/v1/clients", headers=headers, json={"phone": "0641000001"}).get_json()["id"]
    assert client.delete(f"/api/v1/clients/{made}", headers=headers).status_code == 204
    assert client.post("/api/v1/clients", headers=headers, json={"phone": "0641000001"}).get_json()["id"] == made + 1
    with store.transaction() as db:
        db.execute("DELETE FROM messages")
    sent = client.post("/api/v1/messages", headers=headers, json={"phone": "0641000001", "text": "x"})
    assert sent.get_json()["id"] == 1  # no message existed before: the first id
    with store.transaction() as db:
        db.execute("DELETE FROM messages")
    assert client.post("/api/v1/messages", headers=headers, json={"phone": "0641000001", "text": "x"}
                       ).get_json()["id"] == 2
