"""The mailing scheduler with a clock the test controls: start, windows across time zones, end cut-off."""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

import mailings
from database import INTEGRITY_ERRORS
from models import MailingCreate
from store import CANCELED, EXPIRED, FAILED, PYTHON_SPACES, QUEUED, SENT, Store
from texts import Template

CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC)  # the clock the mailings below are validated against


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def add_client(store: Store, phone: str, timezone: str, tags=("a",), name="Ana Ilić", code="64") -> int:
    with store.transaction() as db:
        client_id = db.execute("INSERT INTO clients (phone, operator_code, timezone, name, created_at)"
                               " VALUES (?, ?, ?, ?, 0) RETURNING id", (phone, code, timezone, name)).fetchone()[0]
        db.executemany("INSERT INTO client_tags (tag, client_id) VALUES (?, ?)", [(t, client_id) for t in tags])
    return client_id


def new_mailing(store: Store, start: str, end: str, window=None, selector=None, text="Zdravo {first_name}") -> int:
    """A mailing as the API would create it on CREATED_AT: the test's clock, not the real one."""
    body = {"start_at": start, "end_at": end, "text": text, "filter": selector or {"tags": ["a"]}}
    if window:
        body["window"] = {"from": window[0], "to": window[1]}
    return mailings.create(store, MailingCreate.model_validate(body, context={"now": CREATED_AT}))["id"]


def rows(store: Store, mailing_id: int) -> dict[int, dict]:
    return {row["client_id"]: dict(row) for row in store.connection().execute(
        "SELECT * FROM messages WHERE mailing_id = ?", (mailing_id,))}


@pytest.mark.parametrize("now, zone, window, opening", [
    ("2030-03-10T12:00:00+00:00", "UTC", ("09:00", "21:00"), "2030-03-10T12:00:00+00:00"),  # inside
    ("2030-03-10T06:00:00+00:00", "UTC", ("09:00", "21:00"), "2030-03-10T09:00:00+00:00"),  # before: today
    ("2030-03-10T22:00:00+00:00", "UTC", ("09:00", "21:00"), "2030-03-11T09:00:00+00:00"),  # after: tomorrow
    # Yekaterinburg is UTC+5: 12:00 UTC is 17:00 there, inside 09-21
    ("2030-03-10T12:00:00+00:00", "Asia/Yekaterinburg", ("09:00", "21:00"), "2030-03-10T12:00:00+00:00"),
    # 17:00 UTC is 22:00 there: next 09:00 local is 04:00 UTC tomorrow
    ("2030-03-10T17:00:00+00:00", "Asia/Yekaterinburg", ("09:00", "21:00"), "2030-03-11T04:00:00+00:00"),
    # a window across midnight, 22:00-06:00
    ("2030-03-10T23:30:00+00:00", "UTC", ("22:00", "06:00"), "2030-03-10T23:30:00+00:00"),
    ("2030-03-10T03:00:00+00:00", "UTC", ("22:00", "06:00"), "2030-03-10T03:00:00+00:00"),
    ("2030-03-10T12:00:00+00:00", "UTC", ("22:00", "06:00"), "2030-03-10T22:00:00+00:00"),
    # 12:00 UTC is 17:00 in Yekaterinburg: the night window opens at 22:00 local, 17:00 UTC
    ("2030-03-10T12:00:00+00:00", "Asia/Yekaterinburg", ("22:00", "06:00"), "2030-03-10T17:00:00+00:00"),
    ("2030-03-10T12:00:00+00:00", "UTC", None, "2030-03-10T12:00:00+00:00"),
    # Belgrade, 2027-03-28: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never shows on the
    # clocks, and the first instant at or after it is the jump itself, 03:00 CEST
    ("2027-03-28T00:00:00+00:00", "Europe/Belgrade", ("02:30", "03:30"), "2027-03-28T01:00:00+00:00"),
    ("2027-03-28T01:00:00+00:00", "Europe/Belgrade", ("02:30", "03:30"), "2027-03-28T01:00:00+00:00"),
    ("2027-03-27T12:00:00+00:00", "Europe/Belgrade", ("02:30", "03:30"), "2027-03-28T01:00:00+00:00"),
    # Belgrade, 2027-10-31: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 shows twice
    ("2027-10-30T22:00:00+00:00", "Europe/Belgrade", ("02:30", "03:30"), "2027-10-31T00:30:00+00:00"),
    ("2027-10-31T00:45:00+00:00", "Europe/Belgrade", ("02:30", "03:30"), "2027-10-31T00:45:00+00:00"),
    # 02:10 CET, in the repeated hour: not yet inside; the window opens again at 02:30 CET,
    # not at the first 02:30, which is past, nor tomorrow
    ("2027-10-31T01:10:00+00:00", "Europe/Belgrade", ("02:30", "03:30"), "2027-10-31T01:30:00+00:00"),
    ("2027-10-31T02:30:00+00:00", "Europe/Belgrade", ("02:30", "03:30"), "2027-11-01T01:30:00+00:00"),
])
def test_next_window_opening(now, zone, window, opening):
    assert mailings.next_opening(at(now), zone, window) == at(opening)


def test_a_future_mailing_starts_by_itself_at_start_at(store):
    add_client(store, "+381641000001", "UTC")
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T20:00:00+00:00")
    assert mailings.start_due(store, at("2030-03-10T09:59:59+00:00")) == []
    assert mailings.get(store, mailing_id)["state"] == "scheduled"
    assert mailings.start_due(store, at("2030-03-10T10:00:00+00:00")) == [(mailing_id, 1)]
    [message] = rows(store, mailing_id).values()
    assert (message["status"], message["text"]) == (QUEUED, "Zdravo Ana")
    assert message["deadline"] == at("2030-03-10T20:00:00+00:00")
    assert mailings.get(store, mailing_id)["state"] == "started"


def test_each_client_is_queued_for_its_own_local_window(store):
    utc = add_client(store, "+381641000001", "UTC")
    yekaterinburg = add_client(store, "+79001234567", "Asia/Yekaterinburg")
    late = add_client(store, "+381641000003", "America/Los_Angeles")
    mailing_id = new_mailing(store, "2030-03-10T12:00:00+00:00", "2030-03-10T23:00:00+00:00",
                             window=("09:00", "21:00"))
    mailings.start_due(store, at("2030-03-10T17:00:00+00:00"))
    queued = rows(store, mailing_id)
    assert queued[utc]["next_attempt_at"] == at("2030-03-10T17:00:00+00:00")  # 17:00 in UTC: inside
    # 22:00 in Yekaterinburg: its window opens tomorrow 04:00 UTC, after the end at 23:00 UTC
    assert queued[yekaterinburg]["status"] == EXPIRED
    # 10:00 in Los Angeles (UTC-7 in March 2030 DST): inside
    assert queued[late]["status"] == QUEUED


def test_a_night_window_across_midnight(store):
    client = add_client(store, "+79001234567", "Asia/Yekaterinburg")
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-11T10:00:00+00:00",
                             window=("22:00", "06:00"))
    mailings.start_due(store, at("2030-03-10T10:00:00+00:00"))  # 15:00 there
    assert rows(store, mailing_id)[client]["next_attempt_at"] == at("2030-03-10T17:00:00+00:00")  # 22:00 there


def test_nothing_is_sent_after_end_at(store):
    add_client(store, "+381641000001", "UTC")
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T11:00:00+00:00")
    mailings.start_due(store, at("2030-03-10T10:00:00+00:00"))
    assert store.expire_overdue(at("2030-03-10T10:59:59+00:00")) == 0
    assert store.expire_overdue(at("2030-03-10T11:00:01+00:00")) == 1
    assert [m["status"] for m in rows(store, mailing_id).values()] == [EXPIRED]
    assert store.claim("w", 10, 30) == []


def test_filter_any_tag_any_code_all_together(store):
    wanted = add_client(store, "+381641000001", "UTC", tags=("a", "b"), code="64")
    add_client(store, "+381651000002", "UTC", tags=("a",), code="65")
    add_client(store, "+381641000003", "UTC", tags=("c",), code="64")
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T20:00:00+00:00",
                             selector={"tags": ["b", "z"], "operator_codes": ["64"]})
    mailings.start_due(store, at("2030-03-10T10:00:00+00:00"))
    assert set(rows(store, mailing_id)) == {wanted}
    everyone = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T20:00:00+00:00", selector={"all": True})
    mailings.start_due(store, at("2030-03-10T10:00:01+00:00"))
    assert len(rows(store, everyone)) == 3


def test_one_message_per_client_per_mailing_ever(store):
    client = add_client(store, "+381641000001", "UTC")
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T20:00:00+00:00")
    mailings.start_due(store, at("2030-03-10T10:00:00+00:00"))
    updated_at = store.connection().execute("SELECT updated_at FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0]
    again = mailings._fan_out(store.mailing(mailing_id), at("2030-03-10T10:00:05+00:00"))
    assert store.start_mailing(mailing_id, updated_at, at("2030-03-10T10:00:05+00:00"), again) == 0  # once only
    with pytest.raises(INTEGRITY_ERRORS):
        with store.transaction() as db:
            db.execute("INSERT INTO messages (created_at, updated_at, source, status, next_attempt_at, deadline,"
                       " mailing_id, client_id) VALUES (0, 0, 'mailing', 'QUEUED', 0, 0, ?, ?)", (mailing_id, client))


def test_cancel_and_retry_failed(store):
    first, second = add_client(store, "+381641000001", "UTC"), add_client(store, "+381641000002", "UTC")
    mailing_id = new_mailing(store, "2026-01-01T10:00:00+00:00", "2099-03-10T20:00:00+00:00")
    mailings.start_due(store, at("2026-01-01T10:00:00+00:00"))
    [claimed] = store.claim("w", 1, 30)
    store.transition(claimed["id"], FAILED, "w")
    assert mailings.retry_failed(store, mailing_id, at("2026-01-01T12:00:00+00:00")) == 1
    mailings.cancel(store, mailing_id)
    assert {m["status"] for m in rows(store, mailing_id).values()} == {CANCELED}
    assert {first, second} == set(rows(store, mailing_id))
    with pytest.raises(mailings.MailingConflict):
        mailings.retry_failed(store, mailing_id, at("2026-01-01T12:00:00+00:00"))


def test_stats_count_progress_and_parts(store):
    for i in range(4):
        add_client(store, f"+38164100000{i}", "UTC")
    mailing_id = new_mailing(store, "2026-01-01T10:00:00+00:00", "2099-03-10T20:00:00+00:00")
    mailings.start_due(store, at("2026-01-01T10:00:00+00:00"))
    for message in store.claim("w", 2, 30):
        store.transition(message["id"], SENT, "w", segments=2)
    stats = mailings.stats(store, mailing_id)
    assert (stats["total"], stats["counts"]["SENT"], stats["counts"]["QUEUED"]) == (4, 2, 2)
    assert (stats["progress"], stats["segments"]) == (0.5, 4)
    assert stats["first_sent_at"] is not None
    assert mailings.stats_all(store)[0] == stats


def test_a_window_opening_in_the_spring_forward_gap_sends_at_the_jump(store):
    client = add_client(store, "+381641000001", "Europe/Belgrade")
    mailing_id = new_mailing(store, "2027-03-28T00:00:00+00:00", "2027-03-28T03:00:00+00:00",
                             window=("02:30", "03:30"))
    mailings.start_due(store, at("2027-03-28T00:00:00+00:00"))
    message = rows(store, mailing_id)[client]
    assert (message["status"], message["next_attempt_at"]) == (QUEUED, at("2027-03-28T01:00:00+00:00"))
    # when it comes due, the client's window is open: the sender does not put it off
    assert mailings.next_opening(message["next_attempt_at"], "Europe/Belgrade", ("02:30", "03:30")) \
        == message["next_attempt_at"]


def test_end_at_in_the_past_is_judged_by_the_clock_passed_in():
    body = {"start_at": "2030-03-10T10:00:00+00:00", "end_at": "2030-03-10T20:00:00+00:00", "text": "Zdravo",
            "filter": {"all": True}}
    assert MailingCreate.model_validate(body, context={"now": datetime(2030, 3, 10, 19, 59, tzinfo=UTC)})
    with pytest.raises(ValidationError, match="end_at is in the past"):
        MailingCreate.model_validate(body, context={"now": datetime(2030, 3, 10, 20, 0, tzinfo=UTC)})


def test_a_mailing_matching_no_client_finishes_at_once(store):
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T20:00:00+00:00")
    assert mailings.start_due(store, at("2030-03-10T10:00:00+00:00")) == [(mailing_id, 0)]
    assert mailings.finish_done(store, at("2030-03-10T10:00:00+00:00")) == [mailing_id]
    assert mailings.get(store, mailing_id)["state"] == "finished"
    stats = mailings.stats(store, mailing_id)
    assert (stats["state"], stats["total"], stats["progress"]) == ("finished", 0, 1.0)


def test_a_mailing_finishes_when_nothing_is_left_to_send_and_a_retry_restarts_it(store):
    for i in range(2):
        add_client(store, f"+38164100000{i}", "UTC")
    # dates before the real clock: store.claim takes what is due by it
    mailing_id = new_mailing(store, "2026-01-01T10:00:00+00:00", "2026-01-01T20:00:00+00:00")
    mailings.start_due(store, at("2026-01-01T10:00:00+00:00"))
    sent, failed = store.claim("w", 2, 30)
    store.transition(sent["id"], SENT, "w")
    assert mailings.finish_done(store, at("2026-01-01T10:01:00+00:00")) == []  # one still SENDING
    assert mailings.get(store, mailing_id)["state"] == "started"
    store.transition(failed["id"], FAILED, "w")
    assert mailings.finish_done(store, at("2026-01-01T10:02:00+00:00")) == [mailing_id]
    assert mailings.get(store, mailing_id)["state"] == "finished"
    assert mailings.finish_done(store, at("2026-01-01T10:03:00+00:00")) == []  # once

    assert mailings.retry_failed(store, mailing_id, at("2026-01-01T12:00:00+00:00")) == 1
    assert mailings.get(store, mailing_id)["state"] == "started"
    [again] = store.claim("w", 1, 30)
    store.transition(again["id"], FAILED, "w")
    assert mailings.finish_done(store, at("2026-01-01T12:01:00+00:00")) == [mailing_id]
    with pytest.raises(mailings.MailingConflict):  # past its end_at nothing can be sent for it
        mailings.retry_failed(store, mailing_id, at("2026-01-01T20:00:00+00:00"))


def test_a_mailing_changed_after_the_scheduler_read_it_starts_as_changed(store):
    """The scheduler reads due mailings outside its write; a PATCH landing in between used to be
    answered 200 while the old text went to the old filter's clients."""
    add_client(store, "+381641000001", "UTC", tags=("old",))
    new_client = add_client(store, "+381641000002", "UTC", tags=("new",))
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T20:00:00+00:00",
                             selector={"tags": ["old"]}, text="OLD TEXT")
    read = store.connection().execute("SELECT updated_at FROM mailings WHERE id = ?", (mailing_id,)).fetchone()[0]
    mailings.update(store, mailing_id, {"text": "NEW TEXT", "filter": {"tags": ["new"]}}, {"now": CREATED_AT})
    stale = mailings._fan_out(replace(store.mailing(mailing_id), text="OLD TEXT", filter='{"tags": ["old"]}'),
                              at("2030-03-10T10:00:01+00:00"))
    assert store.start_mailing(mailing_id, read, at("2030-03-10T10:00:01+00:00"), stale) == 0
    assert mailings.get(store, mailing_id)["state"] == "scheduled" and rows(store, mailing_id) == {}
    mailings.start_due(store, at("2030-03-10T10:00:02+00:00"))
    assert {client: row["text"] for client, row in rows(store, mailing_id).items()} == {new_client: "NEW TEXT"}


def test_a_finished_mailing_cannot_be_cancelled_and_a_cancelled_one_stays_so(store):
    mailing_id = new_mailing(store, "2030-03-10T10:00:00+00:00", "2030-03-10T20:00:00+00:00",
                             selector={"tags": ["nobody"]})
    mailings.start_due(store, at("2030-03-10T10:00:00+00:00"))
    mailings.finish_done(store, at("2030-03-10T10:00:01+00:00"))
    with pytest.raises(mailings.MailingConflict, match="has finished"):
        mailings.cancel(store, mailing_id)
    assert mailings.get(store, mailing_id)["state"] == "finished"
    other = new_mailing(store, "2030-03-11T10:00:00+00:00", "2030-03-11T20:00:00+00:00")
    assert [(mailing["state"], canceled) for mailing, canceled in (mailings.cancel(store, other),
                                                                    mailings.cancel(store, other))
            ] == [("canceled", True), ("canceled", False)]


NAMES = ["Ana Ilić", "Marko", "", "Jelena  Jović", " Petar Perić", "Ivan ", "Tab\tName", "Nbsp\xa0Name",
         "Three Word Name", "Ideographic\u3000Space", "Line\nBreak", "Ćirilica Ђорђе"]


@pytest.mark.parametrize("text", ["Zdravo {first_name}, upis {{sutra}}.", "{name}|{first_name}|{name}",
                                  "Bez imena {{ i }} zagrada", "{first_name}"])
def test_the_fan_out_renders_every_name_as_python_does_with_windows_and_late_clients_expired(store, text):
    """The fan-out renders in SQL what it can prove equal to Template.render: each row against it."""
    zones = ["UTC", "Asia/Yekaterinburg", "America/Los_Angeles"]
    clients = {add_client(store, f"+3816410000{i:02d}", zones[i % 3], name=name): (name, zones[i % 3])
               for i, name in enumerate(NAMES)}
    add_client(store, "+381641000099", "UTC", tags=("other",), name="Not Matched")
    now, end = at("2030-03-10T17:00:00+00:00"), at("2030-03-10T23:00:00+00:00")
    mailing_id = new_mailing(store, "2030-03-10T12:00:00+00:00", "2030-03-10T23:00:00+00:00",
                             window=("09:00", "21:00"), text=text)
    assert mailings.start_due(store, now) == [(mailing_id, len(NAMES))]
    template = Template(text)
    queued = rows(store, mailing_id)
    assert set(queued) == set(clients)
    for client_id, (name, zone) in clients.items():
        row = queued[client_id]
        first = name.split()[0] if name else ""
        assert row["text"] == template.render({"name": name, "first_name": first}), name
        opening = mailings.next_opening(now, zone, ("09:00", "21:00"))
        assert (row["next_attempt_at"], row["timezone"], row["window_from"], row["window_to"], row["deadline"]) == (
            opening, zone, "09:00", "21:00", end)
        if opening >= end:  # Yekaterinburg: 22:00 there, its window opens after the end
            assert (row["status"], row["done_at"], row["last_error"]) == (
                EXPIRED, now, "its window does not open before the mailing ends"), zone
        else:
            assert (row["status"], row["done_at"], row["last_error"]) == (QUEUED, None, None), zone
    assert {row["status"] for row in queued.values()} == {QUEUED, EXPIRED}


def test_python_spaces_are_every_character_str_split_splits_at():
    assert set(PYTHON_SPACES) == {c for c in map(chr, range(0x110000)) if c.isspace()}


def recount(store: Store) -> dict[int, tuple]:
    """Each mailing's counters as counting its messages gives them."""
    db = store.connection()
    found: dict[int, tuple] = {}
    for mailing_id in [row[0] for row in db.execute("SELECT id FROM mailings ORDER BY id")]:
        counts = dict(db.execute("SELECT status, count(*) FROM messages WHERE mailing_id = ? GROUP BY status",
                                 (mailing_id,)).fetchall())
        sent = db.execute("SELECT coalesce(sum(segments), 0), min(sent_at), max(sent_at) FROM messages"
                          " WHERE mailing_id = ? AND sent_at IS NOT NULL", (mailing_id,)).fetchone()
        found[mailing_id] = (counts, *sent)
    return found


def counters(store: Store) -> dict[int, tuple]:
    return {progress.mailing_id: (progress.counts, progress.segments, progress.first_sent_at, progress.last_sent_at)
            for progress in store.mailings_progress()}


def test_the_counters_of_every_mailing_equal_a_recount_after_a_mixed_workload(store):
    """Sends, failures, reports, a lease taken over, a retry, a cancel, expiry, a message deleted:
    the counters the triggers keep (migration 9) are what counting the messages gives."""
    for i in range(12):
        add_client(store, f"+3816410001{i:02d}", "UTC")
    first = new_mailing(store, "2026-01-01T10:00:00+00:00", "2099-03-10T20:00:00+00:00")
    second = new_mailing(store, "2026-01-01T10:00:00+00:00", "2099-03-10T20:00:00+00:00")
    short = new_mailing(store, "2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00")
    mailings.start_due(store, at("2026-01-01T10:00:00+00:00"))
    store.enqueue_many("test", 3600, [("+381641000001", "not of a mailing", None, None)] * 3)
    assert store.expire_overdue(at("2026-01-01T12:00:00+00:00")) == 12  # the short one's
    claimed = store.claim("w", 16, 30)
    for index, message in enumerate(claimed):
        outcome = (SENT, SENT, FAILED, QUEUED)[index % 4]
        store.transition(message["id"], outcome, "w", count_attempt=True,
                         **({"segments": 1 + index % 3} if outcome == SENT else {}))
    sent = [m["id"] for m in claimed if store.message(m["id"])["status"] == SENT]
    store.transition(sent[0], FAILED)  # a delivery report: sent, then failed
    store.claim("w2", 3, -1)  # leases that expire at once: taken over by the next claim
    store.claim("w3", 3, 30)
    mailings.retry_failed(store, first, at("2026-01-01T12:00:00+00:00"))
    for message in store.claim("w4", 4, 30):  # sent again: a later sent_at than the first time
        store.transition(message["id"], SENT, "w4", segments=2)
    still_sent = [m for m in sent[1:] if store.message(m)["status"] == SENT]
    store.transition(still_sent[0], "DELIVERED")
    store.transition(still_sent[1], "UNDELIVERED")
    mailings.cancel(store, second)
    with store.transaction() as db:
        db.execute("DELETE FROM messages WHERE id = (SELECT max(id) FROM messages WHERE mailing_id = ?)", (first,))
    assert counters(store) == recount(store)
    assert {status for counts, *_ in recount(store).values() for status in counts} == {
        QUEUED, "SENDING", SENT, "DELIVERED", "UNDELIVERED", FAILED, EXPIRED, CANCELED}
    assert recount(store)[short][0] == {EXPIRED: 12}
