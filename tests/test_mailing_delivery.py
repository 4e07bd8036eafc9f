"""A mailing end to end: the API, a real worker process, the fake gateway, statistics and exports."""
from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import api_keys
from sms_bulk_app import create_app
from tests.conftest import running_worker, wait_until


def test_a_mailing_running_now_is_sent_and_counted(worker_settings, oneclick):
    app = create_app(worker_settings)
    store = app.extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "test", list(api_keys.SCOPES), None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    client_ids = []
    for i, name in enumerate(["Ana Ilić", "Marko Marković", "Jelena Petrović"]):
        created = client.post("/api/v1/clients", headers=headers,
                              json={"phone": f"064100000{i}", "name": name, "tags": ["robotika"]})
        client_ids.append(created.get_json()["id"])
    client.post("/api/v1/clients", headers=headers, json={"phone": "0651234567", "tags": ["drugi"]})
    now = datetime.now(UTC)
    local = now.astimezone(ZoneInfo("Europe/Belgrade"))  # the clients' (default) time zone
    window = {"from": (local - timedelta(hours=2)).strftime("%H:%M"),
              "to": (local + timedelta(hours=2)).strftime("%H:%M")}
    mailing = client.post("/api/v1/mailings", headers=headers, json={
        "start_at": (now - timedelta(minutes=1)).isoformat(), "end_at": (now + timedelta(hours=1)).isoformat(),
        "text": "Zdravo {first_name}, upis počinje sutra.", "filter": {"tags": ["robotika"]},
        "window": window}).get_json()

    with running_worker(worker_settings):
        wait_until(lambda: client.get(f"/api/v1/mailings/{mailing['id']}/stats", headers=headers)
                   .get_json()["counts"]["DELIVERED"] == 3, what="3 DELIVERED")
        wait_until(lambda: client.get(f"/api/v1/mailings/{mailing['id']}", headers=headers)
                   .get_json()["state"] == "finished", what="the mailing finished")
        single = client.post("/api/v1/messages", headers=headers, json={"phone": "+381 64 999 8877", "text": "Test"})
        assert single.status_code == 202 and single.get_json()["status"] == "queued"
        message_id = single.get_json()["id"]
        wait_until(lambda: client.get(f"/api/v1/messages/{message_id}", headers=headers)
                   .get_json()["status"] in ("SENT", "DELIVERED"), what="the single message")

    assert sorted(m["message"] for m in oneclick.messages[:3]) == [
        "Zdravo Ana, upis počinje sutra.", "Zdravo Jelena, upis počinje sutra.", "Zdravo Marko, upis počinje sutra."]
    stats = client.get(f"/api/v1/mailings/{mailing['id']}/stats", headers=headers).get_json()
    assert (stats["total"], stats["progress"], stats["segments"], stats["state"]) == (3, 1.0, 3, "finished")
    assert stats["first_sent_at"] <= stats["last_sent_at"]
    assert client.get("/api/v1/mailings/stats", headers=headers).get_json()["items"] == [stats]
    page = client.get(f"/api/v1/mailings/{mailing['id']}/messages?status=DELIVERED&limit=2", headers=headers)
    assert page.get_json()["total"] == 3 and len(page.get_json()["items"]) == 2
    export = client.get(f"/api/v1/mailings/{mailing['id']}/messages.csv", headers=headers)
    assert export.is_streamed and export.mimetype == "text/csv"
    table = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert sorted(int(row["client_id"]) for row in table) == client_ids
    assert {row["status"] for row in table} == {"DELIVERED"}
    assert client.get(f"/api/v1/messages/{message_id}", headers=headers).get_json()["phone"] == "+381649998877"

    for handler in logging.getLogger().handlers:
        handler.flush()
    log_text = (Path(worker_settings["DATA_DIR"]) / "sms_bulk_app.log").read_text()
    for client_id in client_ids:
        assert f"(mailing {mailing['id']}, client {client_id})" in log_text
    assert "Mailing 1 started: 3 messages queued" in log_text


def test_a_manual_send_to_a_moyklass_user_needs_api_key(settings):
    del settings["API_KEY"]
    app = create_app(settings)
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "t", ["messages:send"], None)
    response = app.test_client().post("/api/v1/messages", headers={"Authorization": f"Bearer {key}"},
                                      json={"moyklass_user_id": 5})
    assert response.status_code == 503 and "API_KEY" in response.get_json()["message"]
    both = app.test_client().post("/api/v1/messages", headers={"Authorization": f"Bearer {key}"},
                                  json={"moyklass_user_id": 5, "phone": "0641234567", "text": "x"})
    assert both.status_code == 400 and "exactly one" in both.get_json()["errors"]["body"]
