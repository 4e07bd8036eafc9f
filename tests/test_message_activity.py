"""message_activity (migration 17), kept by triggers, always says what the messages say: messages sent,
parts, cost, delivered and failed by quarter hour, mailing and provider, through inserts, updates
(sends, reports, retries, a move to another provider) and deletes, on SQLite and PostgreSQL."""
from __future__ import annotations

import time

from store import DELIVERED, FAILED, QUEUED, SENT, UNDELIVERED, DayActivity, Store

START = 1_800_000_000.0 - 1_800_000_000.0 % 86400  # a UTC midnight
DAYS = [START + day * 86400 for day in range(4)]


def _direct(store: Store) -> tuple[list[DayActivity], list[tuple]]:
    """The dashboard's days and the mailings' costs, computed from the messages themselves."""
    db = store.connection()
    days = []
    for first, end in zip(DAYS, DAYS[1:], strict=False):
        sent, parts = db.execute("SELECT count(*), coalesce(sum(segments), 0) FROM messages WHERE sent_at >= ?"
                                 " AND sent_at < ?", (first, end)).fetchone()
        delivered, failed = db.execute(
            "SELECT coalesce(sum(CASE WHEN status = ? THEN 1 ELSE 0 END), 0), coalesce(sum(CASE WHEN status IN (?, ?)"
            " THEN 1 ELSE 0 END), 0) FROM messages WHERE done_at >= ? AND done_at < ?",
            (DELIVERED, FAILED, UNDELIVERED, first, end)).fetchone()
        days.append(DayActivity(int(sent), int(parts), int(delivered), int(failed)))
    costs = [tuple(row) for row in db.execute(
        "SELECT mailing_id, provider, coalesce(currency, ''), count(*), sum(segments),"
        " round(CAST(sum(cost) AS NUMERIC), 6) FROM messages WHERE mailing_id IS NOT NULL AND sent_at IS NOT NULL"
        " AND provider IS NOT NULL"
        " GROUP BY mailing_id, provider, currency ORDER BY mailing_id, provider")]
    return days, [(m, p, c, int(n), int(s), float(x)) for m, p, c, n, s, x in costs]


def _kept(store: Store) -> tuple[list[DayActivity], list[tuple]]:
    return store.daily_activity(DAYS), [(line.group, line.provider, line.currency, line.messages, line.parts,
                                         line.cost) for line in store.mailing_costs()]


def test_the_triggers_keep_the_figures_the_messages_give(store):
    now = time.time()
    with store.transaction() as db:
        mailing = db.execute("INSERT INTO mailings (created_at, updated_at, start_at, end_at, text, filter, state)"
                             " VALUES (?, ?, ?, ?, 'x', '{}', 'started') RETURNING id",
                             (now, now, now, now)).fetchone()[0]
        for number in range(40):
            created = START + number * 7000
            sent = created + 10 if number % 4 else None
            status = QUEUED if sent is None else [SENT, DELIVERED, UNDELIVERED][number % 3]
            done = sent + 50 if status in (DELIVERED, UNDELIVERED) else None
            db.execute("INSERT INTO messages (created_at, updated_at, source, phone, text, status, next_attempt_at,"
                       " deadline, sent_at, done_at, segments, provider, cost, currency, mailing_id)"
                       " VALUES (?, ?, 'api', '+381641234567', 'x', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (created, created, status, created, created + 86400, sent, done, 1 + number % 3,
                        "oneclick" if number % 5 else "smsaero", 0.7 * (1 + number % 3) if sent else None,
                        "EUR" if sent else None, mailing if number % 2 else None))
    assert _kept(store) == _direct(store)
    with store.transaction() as db:  # reports, a failure, a retry that clears the send, another provider, deletes
        db.execute("UPDATE messages SET status = ?, done_at = sent_at + 5 WHERE status = ? AND id % 2 = 0",
                   (DELIVERED, SENT))
        db.execute("UPDATE messages SET status = ?, done_at = ? WHERE status = ? AND id % 3 = 0",
                   (FAILED, START + 86400 * 2 + 100, QUEUED))
        db.execute("UPDATE messages SET status = ?, sent_at = NULL, done_at = NULL, cost = NULL WHERE status = ?"
                   " AND id % 5 = 1", (QUEUED, UNDELIVERED))
        db.execute("UPDATE messages SET provider = 'twilio', cost = 1.5, segments = 2 WHERE id % 7 = 0")
        db.execute("UPDATE messages SET updated_at = updated_at + 1")  # nothing counted changes
        db.execute("DELETE FROM messages WHERE id % 11 = 0")
    assert _kept(store) == _direct(store)
    assert sum(day.sent for day in store.daily_activity(DAYS)) > 0


def test_recent_failures_are_the_newest_of_both_statuses(store):
    with store.transaction() as db:
        for number, status in enumerate([FAILED, UNDELIVERED] * 6):
            db.execute("INSERT INTO messages (created_at, updated_at, source, phone, text, status, next_attempt_at,"
                       " deadline, done_at) VALUES (?, ?, 'api', '+381641234567', 'x', ?, ?, ?, ?)",
                       (START, START, status, START, START + 86400, START + number))
    found = store.recent_failures(START + 2, 5)
    assert [row["done_at"] - START for row in found] == [11, 10, 9, 8, 7]
    assert {row["status"] for row in found} == {FAILED, UNDELIVERED}
    assert store.waiting_count() == 0
