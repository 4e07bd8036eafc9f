"""store.py: the status machine, leases, claims and pushed reports, on a real SQLite file or PostgreSQL
database (each test on both)."""
from __future__ import annotations

import threading
import time

import pytest

from store import (
    CANCELED,
    DELIVERED,
    EXPIRED,
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    UNDELIVERED,
    InvalidTransition,
    Store,
)
from tests.conftest import settings_store


def queue(store: Store, count: int = 1) -> list[int]:
    return store.enqueue_many("test", 3600, [("+381641000001", f"text {i}", None, None) for i in range(count)])


def test_a_message_travels_the_whole_way(store):
    [message_id] = queue(store)
    [claimed] = store.claim("w1", 10, 30)
    assert (claimed["id"], claimed["status"]) == (message_id, SENDING)
    store.transition(message_id, SENT, "w1", count_attempt=True, gateway_ref="ref-1")
    store.transition(message_id, DELIVERED, report_text="Isporučena")
    row = store.message(message_id)
    assert (row["status"], row["attempts"], row["gateway_ref"], row["lease_owner"]) == (DELIVERED, 1, "ref-1", None)
    assert row["sent_at"] and row["done_at"]


@pytest.mark.parametrize("final", [DELIVERED, UNDELIVERED, FAILED])
def test_no_move_out_of_a_report_state_but_retry(store, final):
    [message_id] = queue(store)
    store.claim("w1", 1, 30)
    store.transition(message_id, SENT, "w1")
    store.transition(message_id, final)
    for status in (QUEUED, SENDING, SENT, DELIVERED, UNDELIVERED, FAILED, EXPIRED, CANCELED):
        if status == QUEUED and final != DELIVERED:
            continue  # an operator's retry-failed is the one way out of FAILED / UNDELIVERED
        with pytest.raises(InvalidTransition):
            store.transition(message_id, status)
    assert store.message(message_id)["status"] == final


def test_delivered_is_never_downgraded_even_by_retry_failed(store):
    [delivered, failed] = queue(store, 2)
    store.claim("w1", 2, 30)
    for message_id in (delivered, failed):
        store.transition(message_id, SENT, "w1")
    store.transition(delivered, DELIVERED)
    store.transition(failed, UNDELIVERED)
    assert store.retry_failed(time.time() + 3600) == 1
    assert store.message(delivered)["status"] == DELIVERED
    assert (store.message(failed)["status"], store.message(failed)["attempts"]) == (QUEUED, 0)


def test_a_claimed_message_is_nobody_elses_until_its_lease_expires(store):
    queue(store, 5)
    assert len(store.claim("w1", 10, lease_seconds=0.2)) == 5
    assert store.claim("w2", 10, 30) == []
    time.sleep(0.25)
    taken_over = store.claim("w2", 10, 30)
    assert len(taken_over) == 5
    with pytest.raises(InvalidTransition):  # the first worker's late answer is refused
        store.transition(taken_over[0]["id"], SENT, "w1")
    store.transition(taken_over[0]["id"], SENT, "w2")


def test_threads_claiming_together_never_share_a_message(store, tmp_path, database_settings):
    queue(store, 1000)
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(owner: str) -> None:
        own = settings_store(database_settings | {"DATA_DIR": str(tmp_path)})  # its own, as another process's
        while batch := own.claim(owner, 7, 30):
            with lock:
                claimed.extend(m["id"] for m in batch)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 1000 and len(set(claimed)) == 1000


def test_release_gives_back_only_the_owners_messages(store):
    ids = queue(store, 3)
    store.claim("w1", 3, 30)
    assert store.release("w2", ids) == 0
    assert store.release("w1", ids[:2]) == 2
    assert [store.message(i)["status"] for i in ids] == [QUEUED, QUEUED, SENDING]


def test_retry_failed_since_leaves_older_failures(store):
    [old] = queue(store)
    store.claim("w1", 1, 30)
    store.transition(old, FAILED, "w1")
    cutoff = time.time()
    [new] = queue(store)
    store.claim("w1", 1, 30)
    store.transition(new, FAILED, "w1")
    assert store.retry_failed(time.time() + 3600, since=cutoff) == 1
    assert (store.message(old)["status"], store.message(new)["status"]) == (FAILED, QUEUED)


def test_counts_cover_every_status(store):
    queue(store, 2)
    assert store.counts() == {QUEUED: 2, SENDING: 0, SENT: 0, DELIVERED: 0, UNDELIVERED: 0,
                              FAILED: 0, EXPIRED: 0, CANCELED: 0}


def sent_through(store: Store, provider: str, reference: str) -> int:
    [message_id] = queue(store)
    store.claim("w1", 1, 30)
    store.transition(message_id, SENT, "w1", count_attempt=True, gateway_ref=reference, provider=provider)
    return message_id


def test_a_pushed_report_of_a_sent_message_is_applied_at_once(store):
    message_id = sent_through(store, "twilio", "SM1")
    assert store.record_pushed_report("twilio", "SM1", DELIVERED, "delivered", time.time())
    row = store.message(message_id)
    assert (row["status"], row["report_text"]) == (DELIVERED, "delivered") and row["done_at"]
    assert store.table_counts()["pushed_reports"] == 0


def test_a_report_pushed_before_the_send_is_written_waits_for_it(store):
    [message_id] = queue(store)
    store.claim("w1", 1, 30)  # SENDING: the gateway answered, its answer not yet written
    assert not store.record_pushed_report("smpp", "77", UNDELIVERED, "stat:UNDELIV", time.time())
    assert store.apply_pushed_reports(time.time(), 3600) == 0 and store.message(message_id)["status"] == SENDING
    store.transition(message_id, SENT, "w1", count_attempt=True, gateway_ref="77", provider="smpp")
    assert store.apply_pushed_reports(time.time(), 3600) == 1
    assert (store.message(message_id)["status"], store.message(message_id)["report_text"]) == (UNDELIVERED,
                                                                                               "stat:UNDELIV")
    assert store.table_counts()["pushed_reports"] == 0


def test_a_pushed_report_finds_only_its_providers_message_and_a_repeat_changes_nothing(store):
    twilio = sent_through(store, "twilio", "X1")
    smpp = sent_through(store, "smpp", "X1")
    assert store.record_pushed_report("smpp", "X1", FAILED, "stat:REJECTD", time.time())
    assert (store.message(smpp)["status"], store.message(twilio)["status"]) == (FAILED, SENT)
    assert not store.record_pushed_report("smpp", "X1", DELIVERED, "late and contrary", time.time())
    assert store.message(smpp)["status"] == FAILED and store.table_counts()["pushed_reports"] == 0


def test_a_pushed_report_whose_message_never_comes_is_forgotten_after_keep_seconds(store):
    store.record_pushed_report("twilio", "SM-unknown", DELIVERED, "", time.time() - 7200)
    store.record_pushed_report("twilio", "SM-recent", DELIVERED, "", time.time())
    assert store.apply_pushed_reports(time.time(), 3600) == 0
    assert store.table_counts()["pushed_reports"] == 1


def test_a_pushed_report_must_be_final(store):
    with pytest.raises(ValueError, match="not 'SENT'"):
        store.record_pushed_report("twilio", "SM1", SENT, "", time.time())
