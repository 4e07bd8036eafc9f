"""The worker as a real process: sending, retries, reports, limits, crashes, shutdown, the CLI."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from sms_bulk_app import create_app
from store import DELIVERED, EXPIRED, FAILED, QUEUED, SENDING, SENT, UNDELIVERED, Store
from tests.conftest import (
    command,
    command_env,
    load_fixture,
    run_command,
    running_worker,
    settings_store,
    sqlite_only,
    wait_until,
)


def queue_texts(settings, count: int, valid_seconds: int = 3600) -> Store:
    """`count` messages, each with its own text so the fake can tell them apart."""
    store = settings_store(settings)
    store.enqueue_many("test", valid_seconds, [("+381641000001", f"Poruka {i}", None, None) for i in range(count)])
    return store


def all_in(store: Store, *statuses: str):
    counts = store.counts()
    return sum(counts.values()) == sum(counts[s] for s in statuses)


def test_cli_send_is_sent_by_the_worker_and_reported_delivered(worker_settings, oneclick):
    queued = run_command(worker_settings, "send", "--phone", "064 123 4567", "--text", "Zdravo iz CLI")
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.strip() == "queued as message 1"
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] == DELIVERED, what="DELIVERED")
    row = store.message(1)
    assert (row["phone"], row["text"], row["attempts"], row["report_text"]) == \
        ("+381641234567", "Zdravo iz CLI", 1, "Isporučena")
    assert oneclick.messages[0]["phone"] == "381641234567"
    status = run_command(worker_settings, "status")
    assert status.returncode == 0
    assert "DELIVERED    1" in status.stdout and "oldest waiting: none" in status.stdout


@pytest.mark.parametrize("status_val, final", [(2, UNDELIVERED), (8, FAILED)])
def test_negative_delivery_reports_are_recorded(worker_settings, oneclick, status_val, final):
    oneclick.report_status = status_val
    store = queue_texts(worker_settings, 1)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] == final, what=final)
    assert store.message(1)["report_text"] == oneclick.REPORT_DESCRIPTIONS[status_val]


def test_pending_reports_are_polled_until_the_limit_then_left_sent(worker_settings, oneclick):
    oneclick.report_status = 5
    worker_settings["SMS_DLR_MAX_SECONDS"] = "1"
    store = queue_texts(worker_settings, 1)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] == SENT and store.message(1)["report_next_at"] is None,
                   what="polling to stop")
    assert oneclick.report_calls >= 2
    assert store.message(1)["report_text"] == "Na čekanju"


def test_retry_failed_requeues_and_the_worker_sends_again(worker_settings, oneclick):
    oneclick.answer_status = -1  # permanent: invalid phone at the gateway
    store = queue_texts(worker_settings, 3)
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[FAILED] == 3, what="3 FAILED")
        assert [store.message(i)["attempts"] for i in (1, 2, 3)] == [1, 1, 1]  # failed at once
        oneclick.answer_status = None
        result = run_command(worker_settings, "retry-failed")
        assert result.stdout.strip() == "3 FAILED / UNDELIVERED messages queued again"
        wait_until(lambda: store.counts()[DELIVERED] == 3, what="3 DELIVERED")


def test_transient_errors_are_retried_with_backoff_until_sent(worker_settings, oneclick):
    oneclick.fail_next = [503, 502, 500]
    store = queue_texts(worker_settings, 1)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] in (SENT, DELIVERED), what="SENT")
    assert store.message(1)["attempts"] == 4
    assert len(oneclick.messages) == 1


def test_attempts_are_capped(worker_settings, oneclick):
    worker_settings["SMS_MAX_ATTEMPTS"] = "3"
    oneclick.answer_status = -3
    store = queue_texts(worker_settings, 1)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] == FAILED, what="FAILED")
    row = store.message(1)
    assert row["attempts"] == 3 and row["last_error"].startswith("gave up after 3 attempts")


def test_a_message_past_its_deadline_expires_unsent(worker_settings, oneclick):
    store = queue_texts(worker_settings, 1, valid_seconds=1)
    time.sleep(1.1)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] == EXPIRED, what="EXPIRED")
    assert oneclick.messages == []


def test_async_webhook_survives_a_moyklass_outage(worker_settings, moyklass, oneclick):
    worker_settings["WEBHOOK_MODE"] = "async"
    moyklass.add_user(1001, "381641000001")
    port = moyklass.port
    moyklass.stop()
    client = create_app(worker_settings).test_client()
    response = client.post("/webhook", json=load_fixture("sub_lessons_left"))
    assert response.status_code == 202
    assert response.get_json() == {"status": "queued", "id": 1}
    again = client.post("/webhook", json=load_fixture("sub_lessons_left"))
    assert again.status_code == 202 and again.get_json()["duplicate"] is True
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["last_error"], what="a failed lookup")
        assert store.message(1)["status"] in (QUEUED, SENDING)
        moyklass.start(port)
        wait_until(lambda: store.message(1)["status"] in (SENT, DELIVERED), what="SENT")
    assert store.message(1)["attempts"] == 1  # the outage burnt no attempt
    assert [m["phone"] for m in oneclick.messages] == ["381641000001"]


def test_sync_webhook_with_a_failing_gateway_is_finished_by_the_worker(worker_settings, moyklass, oneclick):
    moyklass.add_user(1001, "381641000001")
    oneclick.fail_next = [503]
    response = create_app(worker_settings).test_client().post("/webhook", json=load_fixture("sub_lessons_left"))
    assert response.status_code == 500
    assert "stays queued and will be retried" in response.get_json()["message"]
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] in (SENT, DELIVERED), what="SENT")
    assert len(oneclick.messages) == 1 and moyklass.user_calls == 1


def test_bad_credentials_pause_sending_and_turn_health_503(worker_settings, oneclick):
    worker_settings["SMS_RETRY_BASE_SECONDS"] = "0.25"  # a pause of 1 s
    oneclick.password = "changed-at-the-gateway"
    store = queue_texts(worker_settings, 5)
    client = create_app(worker_settings).test_client()
    with running_worker(worker_settings):
        wait_until(lambda: store.provider_pause("oneclick"), what="a pause")
        health = client.get("/health")
        assert health.status_code == 503
        assert health.get_json()["checks"]["provider"].startswith("error: sending paused")
        time.sleep(1.5)  # a try after the pause is refused again
        assert store.counts()[SENT] == 0 and oneclick.messages == []
        assert all(store.message(i)["attempts"] == 0 for i in range(1, 6))  # none burnt
        oneclick.password = worker_settings["SMS_PASSWORD"]
        wait_until(lambda: store.counts()[DELIVERED] == 5, what="5 DELIVERED")
        assert client.get("/health").status_code == 200
    assert len(oneclick.messages) == 5


def test_gateway_down_for_a_while_then_every_message_sent_exactly_once(worker_settings, oneclick):
    worker_settings["SMS_MAX_ATTEMPTS"] = "100"
    port = oneclick.port
    oneclick.stop()
    store = queue_texts(worker_settings, 60)
    with running_worker(worker_settings):
        wait_until(lambda: sum(store.message(i)["attempts"] for i in range(1, 61)) >= 60, what="retries")
        oneclick.start(port)
        wait_until(lambda: all_in(store, SENT, DELIVERED), what="all SENT")
    texts = Counter(m["message"] for m in oneclick.messages)
    assert set(texts) == {f"Poruka {i}" for i in range(60)}
    assert max(texts.values()) == 1


def test_two_workers_never_send_a_message_twice(worker_settings, oneclick):
    store = queue_texts(worker_settings, 500)
    with running_worker(worker_settings), running_worker(worker_settings):
        wait_until(lambda: all_in(store, SENT, DELIVERED), timeout=60, what="all SENT")
    texts = Counter(m["message"] for m in oneclick.messages)
    assert len(texts) == 500 and max(texts.values()) == 1
    assert {store.message(i)["lease_owner"] for i in range(1, 501)} == {None}  # every lease cleared


def test_kill_9_at_random_moments_loses_nothing(worker_settings, oneclick):
    """Every message ends SENT; a duplicate is only ever one that was in flight at a kill."""
    oneclick.latency = 0.01  # at most 400 sends/s with 4 senders: the three kills land mid-run
    worker_settings.update(SMS_DLR_MAX_SECONDS="0", SMS_CONCURRENCY="4")
    store = queue_texts(worker_settings, 500)
    in_flight_at_kills: set[str] = set()
    rng = random.Random(20261123)
    for _ in range(3):
        with running_worker(worker_settings) as worker:
            wait_until(lambda: store.counts()[SENT] > 0 or worker.poll() is not None, what="sending")
            time.sleep(rng.uniform(0.05, 0.6))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        in_flight = [i for i in range(1, 501) if store.message(i)["status"] == SENDING]
        in_flight_at_kills |= {f"Poruka {i - 1}" for i in in_flight}
    assert store.counts()[SENT] < 500, "the kills came too late to test anything"
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 500, timeout=60, what="all SENT")
    texts = Counter(m["message"] for m in oneclick.messages)
    duplicates = {text for text, count in texts.items() if count > 1}
    assert len(texts) == 500
    assert duplicates <= in_flight_at_kills
    print(f"in flight at the kills: {len(in_flight_at_kills)}, sent twice: {len(duplicates)}")


def test_sigterm_stops_within_10_s_and_releases_what_did_not_start(worker_settings, oneclick):
    oneclick.latency = 0.5
    worker_settings["SMS_CONCURRENCY"] = "4"
    store = queue_texts(worker_settings, 100)
    with running_worker(worker_settings) as worker:
        wait_until(lambda: oneclick.messages, what="a first send")
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
    counts = store.counts()
    assert counts[SENDING] == 0  # released or finished, none left leased
    assert counts[QUEUED] > 0 and counts[QUEUED] + counts[SENT] + counts[DELIVERED] == 100
    assert Counter(m["message"] for m in oneclick.messages).most_common(1)[0][1] == 1


def test_rate_limit_is_shared_by_two_workers(worker_settings, oneclick):
    worker_settings.update(SMS_RATE_PER_SEC="25", SMS_DLR_MAX_SECONDS="0")
    queue_texts(worker_settings, 400)
    with running_worker(worker_settings), running_worker(worker_settings):
        wait_until(lambda: len(oneclick.messages) >= 50, what="sending")
        start = oneclick.messages[-1]["at"]
        time.sleep(4.2)
        window = [m for m in oneclick.messages if start < m["at"] <= start + 4]
    assert 4 * 25 * 0.95 <= len(window) <= 4 * 25 * 1.05


@sqlite_only
def test_embedded_default_runs_a_worker_in_the_web_process(worker_settings, oneclick, tmp_path):
    """`python sms_bulk_app.py` alone: a queued message is sent with no worker process."""
    from tests.conftest import free_port

    worker_settings.update(HOST="127.0.0.1", PORT=str(free_port()))
    run_command(worker_settings, "send", "--phone", "0641234567", "--text", "jedna komanda")
    server = subprocess.Popen(command(worker_settings), cwd=tmp_path, env=command_env(worker_settings),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: oneclick.messages, what="the SMS")
    finally:
        server.send_signal(signal.SIGTERM)
        exit_code = server.wait(timeout=15)
    assert exit_code == 0
    assert oneclick.messages[0]["message"] == "jedna komanda"
    assert os.path.exists(tmp_path / "data" / "sms_bulk_app.db")


def test_a_locked_database_delays_the_worker_without_losing_or_repeating_a_send(worker_settings, oneclick):
    worker_settings.update(DATABASE_TIMEOUT="0.3", SMS_DLR_MAX_SECONDS="0", SMS_CONCURRENCY="4")
    oneclick.latency = 0.01
    store = queue_texts(worker_settings, 300)
    with running_worker(worker_settings) as worker:
        wait_until(lambda: store.counts()[SENT] > 20, what="sending")
        locker = sqlite3.connect(Path(worker_settings["DATA_DIR"]) / "sms_bulk_app.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another program holds the database for 2 s
        time.sleep(2)
        locker.execute("ROLLBACK")
        locker.close()
        wait_until(lambda: store.counts()[SENT] == 300, what="all SENT")
        assert worker.poll() is None  # it kept running
    texts = Counter(m["message"] for m in oneclick.messages)
    assert len(texts) == 300 and max(texts.values()) == 1


def test_a_queued_event_whose_text_was_removed_fails_naming_the_setting(worker_settings, moyklass, oneclick):
    """Queued with SMS_TEXT_USER_BIRTHDAY set, sent by a worker started without it."""
    moyklass.add_user(1001, "381641000001")
    store = settings_store(worker_settings)
    message_id = store.enqueue("webhook", 3600, user_id=1001, event="user_birthday")
    with running_worker(worker_settings):
        wait_until(lambda: store.message(message_id)["status"] == FAILED, what="FAILED")
    message = store.message(message_id)
    assert message["last_error"] == "no text for user_birthday: set SMS_TEXT_USER_BIRTHDAY to send an SMS for it"
    assert oneclick.messages == [] and moyklass.user_calls == 0


def test_a_queued_message_whose_text_now_needs_a_field_it_lacks_fails_naming_it(worker_settings, moyklass, oneclick):
    """Queued by hand (no webhook object), sent by a worker whose SMS_TEXT_PAYMENT_NEW now uses {summa}:
    it fails once, saying why, where it used to crash the attempt and be claimed again every lease."""
    moyklass.add_user(1004, "381641000004")
    worker_settings["SMS_TEXT_PAYMENT_NEW"] = "Uplata {summa} je primljena, {first_name}."
    store = settings_store(worker_settings)
    message_id = store.enqueue("api", 3600, user_id=1004, event="payment_new")
    with running_worker(worker_settings):
        wait_until(lambda: store.message(message_id)["status"] == FAILED, what="FAILED")
    message = store.message(message_id)
    assert message["last_error"] == "the text of payment_new needs {summa}, which only its webhook carries"
    assert oneclick.messages == []


def queue_async_webhooks(settings, moyklass, count: int):
    """`count` async sub_lessons_left webhooks for students 1..count, MoyKlass at its real 6/s; the app's client."""
    settings.update(WEBHOOK_MODE="async", SMS_DLR_MAX_SECONDS="0", USER_CACHE_SECONDS="0", MOYKLASS_RATE_PER_SEC="6")
    moyklass.numbered_users = count
    client = create_app(settings).test_client()
    for user_id in range(1, count + 1):
        payload = load_fixture("sub_lessons_left")
        payload["object"]["userId"] = user_id
        assert client.post("/webhook", json=payload).status_code == 202
    return client


def test_queued_webhooks_are_looked_up_together_within_moyklass_rate(worker_settings, moyklass, oneclick):
    """200 async webhooks for 200 students: a few batch lookups instead of 200 single ones (29 s at 7/s)."""
    queue_async_webhooks(worker_settings, moyklass, 200)
    store = settings_store(worker_settings)
    started = time.monotonic()
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 200, timeout=30, what="200 SENT")
    took = time.monotonic() - started
    lookups = [r for r in moyklass.received if r["path"].startswith("/v1/company/users")]
    assert len(lookups) <= 8, [r["path"] for r in lookups]
    assert all(r["status"] == 200 for r in moyklass.received)  # not one 429
    assert Counter(m["phone"] for m in oneclick.messages).most_common(1)[0][1] == 1
    print(f"200 webhooks sent in {took:.1f} s with {len(lookups)} lookups")


def test_after_moyklass_fails_a_lookup_together_the_messages_wait_for_the_next_one(worker_settings, moyklass,
                                                                                  oneclick):
    """MoyKlass answers 503 to the first lookups: the messages must not each look their student up
    on their own (that used up the rate limit the next lookup together needed, and 1,000 webhooks
    went out at 6 a second, with 245 MoyKlass requests)."""
    client = queue_async_webhooks(worker_settings, moyklass, 200)
    client.application.extensions["sms_bulk_app"].dispatcher.moyklass.tokens.get()  # the token first: no 503 for it
    moyklass.fail_next = [503] * 5
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 200, timeout=40, what="200 SENT")
    lookups = [r for r in moyklass.received if r["path"].startswith("/v1/company/users")]
    assert len([r for r in lookups if r["status"] == 503]) == 5
    # Together: 5 refused, then a few for 200 students (up to 100 a lookup, one per claim). One each
    # would be 200; the loop claims again while a lookup is under way, so claims may be smaller.
    assert len(lookups) <= 24, [r["path"] for r in lookups]
    assert Counter(m["phone"] for m in oneclick.messages).most_common(1)[0][1] == 1
