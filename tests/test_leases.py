"""Sends that cannot outlive their lease, outcomes that are unknown, claims and reports (real worker processes)."""
from __future__ import annotations

import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

import api_keys
from sms_bulk_app import create_app
from store import FAILED, QUEUED, SENDING, SENT, Store
from tests.conftest import (
    load_fixture,
    run_command,
    running_gunicorn,
    running_worker,
    settings_store,
    sqlite_only,
    wait_until,
)


def queue_texts(settings, count: int) -> Store:
    store = settings_store(settings)
    store.enqueue_many("test", 3600, [("+381641000001", f"Poruka {i}", None, None) for i in range(count)])
    return store


def test_a_trickling_gateway_is_cut_at_the_deadline_and_its_outcome_counted_unknown(worker_settings, oneclick):
    """Each byte of the answer comes inside HTTP_TIMEOUT (1 s), the whole answer would take ~10 s,
    beyond the 6.5 s lease: before, the lease expired mid-send and the SMS went out every lease."""
    oneclick.trickle_seconds = 0.1
    worker_settings["SMS_DLR_MAX_SECONDS"] = "0"
    store = queue_texts(worker_settings, 1)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] == FAILED, timeout=15, what="FAILED")
        time.sleep(1.0)  # a worker that would still send again has every chance to here
    message = store.message(1)
    assert len(oneclick.messages) == 2  # SMS_MAX_UNKNOWN_OUTCOMES=2 bounds the possible copies
    assert (message["attempts"], message["unknown_outcomes"], message["error_code"]) == (2, 2, "timeout")
    assert message["last_error"] == ("not tried again: outcome unknown, it may have been sent (2 of at most 2):"
                                     " OneClick: no whole answer within 1 s (code timeout)")
    status = run_command(worker_settings, "status")
    assert "outcome unknown: 2 sends of 1 messages" in status.stdout
    health = create_app(worker_settings).test_client().get("/health").get_json()
    assert health["details"] == {"unknown_outcome_messages": 1, "unknown_outcome_sends": 2}


def test_a_lease_is_renewed_while_its_message_waits_for_the_rate_limit(worker_settings, oneclick):
    """One send every 4 s and a 6.5 s lease: the third message waits 8 s for its turn. Before, its
    lease expired while it waited, the worker claimed it again, and it was sent twice (at 12 s)."""
    worker_settings.update(SMS_RATE_PER_SEC="0.25", SMS_DLR_MAX_SECONDS="0")
    store = queue_texts(worker_settings, 3)
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 3, timeout=15, what="3 SENT")
        time.sleep(4.5)  # past the moment a second claim's send would have come
    texts = Counter(m["message"] for m in oneclick.messages)
    assert texts == Counter({f"Poruka {i}": 1 for i in range(3)})


def test_claim_returns_the_rows_as_its_update_left_them(settings):
    store = queue_texts(settings, 3)
    before = time.time()
    claimed = store.claim("worker-a", 2, 60)
    assert sorted(row["id"] for row in claimed) == [1, 2]
    for row in claimed:
        assert (row["status"], row["lease_owner"]) == (SENDING, "worker-a")
        assert before + 60 <= row["lease_until"] <= time.time() + 60
    assert store.claim("worker-b", 5, 60)[0]["id"] == 3 and store.message(3)["lease_owner"] == "worker-b"
    assert store.message(1)["status"] == SENDING and store.message(1)["lease_owner"] == "worker-a"


def test_reports_are_asked_of_the_provider_that_sent_and_only_until_report_until(settings, oneclick):
    store = queue_texts(settings, 3)
    now = time.time()
    with store.transaction() as db:
        db.execute("UPDATE messages SET status = 'SENT', gateway_ref = 'r', report_next_at = ?,"
                   " report_until = ?, provider = ?", (now - 1, now + 3600, "oneclick"))
        db.execute("UPDATE messages SET provider = 'console' WHERE id = 2")
        db.execute("UPDATE messages SET report_until = ? WHERE id = 3", (now - 10,))
    assert [row["id"] for row in store.claim_reports("oneclick", 10, 60)] == [1]
    assert store.message(3)["report_next_at"] is None  # past report_until: no longer asked
    assert store.message(2)["report_next_at"] == now - 1  # waits for a worker that has its provider
    assert store.claim_reports("console", 10, 60)[0]["id"] == 2


def test_a_worker_on_another_provider_leaves_pending_reports_alone(worker_settings, oneclick):
    """Switching SMS_PROVIDER with reports pending: before, NotImplementedError every lease, forever."""
    worker_settings["SMS_DLR_MAX_SECONDS"] = "3"
    store = queue_texts(worker_settings, 1)
    oneclick.report_status = 5  # pending: the report is asked again and again
    with running_worker(worker_settings):
        wait_until(lambda: oneclick.report_calls >= 1, what="a report poll")
    console = dict(worker_settings, SMS_PROVIDER="console")
    with running_worker(console):
        time.sleep(2.0)
    log = (Path(worker_settings["DATA_DIR"]) / "sms_bulk_app.log").read_text()
    assert "NotImplementedError" not in log and "Unexpected error" not in log
    assert store.message(1)["status"] == SENT


def test_cancelling_a_mailing_stops_what_its_worker_has_claimed_but_not_sent(worker_settings, oneclick):
    """The worker leases 4 messages per sender ahead; before, all of them went out after the cancel."""
    oneclick.latency = 0.2
    worker_settings.update(SMS_CONCURRENCY="2", SMS_DLR_MAX_SECONDS="0")
    app = create_app(worker_settings)
    store = app.extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "test", list(api_keys.SCOPES), None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    for i in range(40):
        assert client.post("/api/v1/clients", headers=headers,
                           json={"phone": f"+3816410{i:05d}", "tags": ["t"]}).status_code == 201
    now = datetime.now(UTC)
    mailing = client.post("/api/v1/mailings", headers=headers, json={
        "start_at": (now - timedelta(minutes=1)).isoformat(), "end_at": (now + timedelta(hours=1)).isoformat(),
        "text": "Otkazano?", "filter": {"tags": ["t"]}}).get_json()
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENDING] >= 8 and len(oneclick.messages) >= 2, what="sending")
        canceled = client.post(f"/api/v1/mailings/{mailing['id']}/cancel", headers=headers)
        sent_at_cancel = len(oneclick.messages)
        wait_until(lambda: store.counts()[SENDING] == 0 and store.counts()[QUEUED] == 0, what="settled")
    assert canceled.status_code == 200
    after = len(oneclick.messages) - sent_at_cancel
    assert after <= 2, f"{after} sent after the cancel; only the 2 on the wire may finish"
    stats = client.get(f"/api/v1/mailings/{mailing['id']}/stats", headers=headers).get_json()
    assert stats["counts"]["SENT"] == len(oneclick.messages)
    assert stats["counts"]["CANCELED"] == 40 - len(oneclick.messages)


@sqlite_only
def test_database_timeout_bounds_every_writer_when_another_program_holds_the_database(settings, moyklass, oneclick):
    """8 parallel webhooks against a database locked elsewhere: before, they queued on the write lock
    and got their 503 after 1, 2, 3 ... DATABASE_TIMEOUTs."""
    settings["DATABASE_TIMEOUT"] = "1"
    with running_gunicorn(settings, workers=1, threads=8) as base_url:
        locker = sqlite3.connect(Path(settings["DATA_DIR"]) / "sms_bulk_app.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")

        def fire(_: int) -> tuple[int, float]:
            started = time.monotonic()
            status = requests.post(f"{base_url}/webhook", json=load_fixture("sub_lessons_left"), timeout=30).status_code
            return status, time.monotonic() - started

        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(fire, range(8)))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    assert [status for status, _ in answers] == [503] * 8
    assert max(took for _, took in answers) < 1.8, answers


def test_a_sync_send_whose_result_the_database_refuses_is_written_later_not_sent_again(settings, moyklass, oneclick):
    """The gateway takes the SMS, then the database is held by another program past DATABASE_TIMEOUT.
    Before, the webhook answered 503 "nothing was kept" and, its lease expired, the worker sent it again."""
    settings.update(DATABASE_TIMEOUT="1", HTTP_TIMEOUT="2", WORKER_LEASE_SECONDS="6", SMS_RETRY_BASE_SECONDS="0.05",
                    SMS_DLR_MAX_SECONDS="0")
    moyklass.add_user(1001, "381641000001")
    oneclick.latency = 1.5
    client = create_app(settings).test_client()
    database = Path(settings["DATA_DIR"]) / "sms_bulk_app.db"

    def hold_the_database() -> None:
        time.sleep(0.3)  # the webhook is committed and its send is on the wire
        locker = sqlite3.connect(database, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        time.sleep(3.2)
        locker.execute("ROLLBACK")
        locker.close()

    with running_worker(settings), ThreadPoolExecutor(1) as pool:
        holder = pool.submit(hold_the_database)
        answer = client.post("/webhook", json=load_fixture("sub_lessons_left"))
        holder.result()
        store = settings_store(settings)
        wait_until(lambda: store.message(1)["status"] == SENT, timeout=5, what="the late result")
        time.sleep(7.0 - 3.5)  # past the lease: a worker that could take it over would have
    assert (answer.status_code, answer.get_json()) == (200, {"status": "success", "id": 1})
    assert len(oneclick.messages) == 1
