"""Bulk mailings: a text to every client matching a filter, between start_at and end_at, inside
each client's local-time window; each mailing's messages go through the outbox like any other.

Time is always passed in (`now`, seconds since the epoch), so the scheduler can be tested with
a clock the test controls.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from schemas import MAILING_FIELDS, STATUS_NAMES, MailingCreate
from store import QUEUED, SENDING, Store
from texts import Template

SCHEDULED, STARTED, FINISHED, CANCELED_STATE = "scheduled", "started", "finished", "canceled"

log = logging.getLogger(__name__)


class MailingConflict(Exception):
    """The mailing has started (or ended) and cannot be changed that way any more."""


def next_opening(now: float, timezone: str, window: tuple[str, str] | None) -> float:
    """The first moment at or after `now` inside the local-time `window` of `timezone`.

    A window whose end is before its start wraps midnight (22:00-06:00). On the nights clocks
    change, a start the clocks skip (02:30 when 02:00 jumps to 03:00) opens at the jump, the
    first instant whose local time is past it; a start the clocks show twice (02:30 when 03:00
    falls back to 02:00) opens at its first showing, or at its second once the first has passed.
    """
    if not window:
        return now
    start, end = clock_time.fromisoformat(window[0]), clock_time.fromisoformat(window[1])
    zone = ZoneInfo(timezone)
    local = datetime.fromtimestamp(now, zone)
    moment = local.time()
    inside = start <= moment < end if start < end else (moment >= start or moment < end)
    if inside:
        return now
    day = local.date() if moment < start else local.date() + timedelta(days=1)
    return _showing(day, start, zone, now)


def _showing(day: date, start: clock_time, zone: ZoneInfo, now: float) -> float:
    """The first instant at or after `now` on `day` whose local time is `start`; when the
    clocks skip `start`, the jump over it."""
    wall = datetime.combine(day, start, tzinfo=zone)
    first, second = wall.timestamp(), wall.replace(fold=1).timestamp()  # read with the offset before / after
    if second < first:  # skipped: read with the offset after the jump, it falls before it
        return _offset_change(second, first, zone)
    return first if first >= now else second


def _offset_change(low: float, high: float, zone: ZoneInfo) -> float:
    """The instant in (low, high] at which `zone` takes the UTC offset it has at `high`."""
    offset = datetime.fromtimestamp(high, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return high


def _public(row: dict[str, Any]) -> dict[str, Any]:
    window = {"from": row["window_from"], "to": row["window_to"]} if row["window_from"] else None
    return {"id": row["id"], "start_at": _utc(row["start_at"]), "end_at": _utc(row["end_at"]), "text": row["text"],
            "filter": json.loads(row["filter"]), "window": window, "state": row["state"],
            "created_at": _utc(row["created_at"]), "started_at": _utc(row["started_at"])}


def _utc(moment: float | None) -> datetime | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC)


def create(store: Store, mailing: MailingCreate) -> dict[str, Any]:
    now = time.time()
    window = mailing.window
    with store.transaction() as db:
        cursor = db.execute(
            "INSERT INTO mailings (created_at, updated_at, start_at, end_at, text, filter, window_from, window_to,"
            " state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, now, mailing.start_at.timestamp(), mailing.end_at.timestamp(), mailing.text,
             mailing.filter.model_dump_json(), window.from_ if window else None, window.to if window else None,
             SCHEDULED))
        return _public(dict(db.execute("SELECT * FROM mailings WHERE id = ?", (cursor.lastrowid,)).fetchone()))


def get(store: Store, mailing_id: int) -> dict[str, Any] | None:
    row = store.connection().execute("SELECT * FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
    return _public(dict(row)) if row else None


def list_all(store: Store) -> list[dict[str, Any]]:
    return [_public(dict(row)) for row in store.connection().execute("SELECT * FROM mailings ORDER BY id")]


def update(store: Store, mailing_id: int, changes: dict[str, Any], context: Mapping[str, Any]
           ) -> dict[str, Any] | None:
    """Change a mailing that has not started; the whole result is validated again, with the
    validation `context` the API uses (region, max_segments)."""
    current = get(store, mailing_id)
    if current is None:
        return None
    if current["state"] != SCHEDULED:
        raise MailingConflict(f"mailing {mailing_id} is {current['state']}: it can no longer be changed")
    merged = {key: current[key] for key in ("start_at", "end_at", "text", "filter", "window")} | changes
    if merged["window"] is None:
        merged.pop("window")
    mailing = MailingCreate.model_validate(merged, context=context)
    window = mailing.window
    with store.transaction() as db:
        changed = db.execute(
            "UPDATE mailings SET start_at = ?, end_at = ?, text = ?, filter = ?, window_from = ?, window_to = ?,"
            " updated_at = ? WHERE id = ? AND state = ?",
            (mailing.start_at.timestamp(), mailing.end_at.timestamp(), mailing.text, mailing.filter.model_dump_json(),
             window.from_ if window else None, window.to if window else None, time.time(), mailing_id, SCHEDULED))
        if changed.rowcount != 1:
            raise MailingConflict(f"mailing {mailing_id} started meanwhile: it can no longer be changed")
    return get(store, mailing_id)


def delete(store: Store, mailing_id: int) -> bool:
    """Delete a mailing that never started; one that did keeps its record for its messages' sake."""
    with store.transaction() as db:
        row = db.execute("SELECT started_at FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
        if row is None:
            return False
        if row["started_at"] is not None:
            raise MailingConflict(f"mailing {mailing_id} has started: cancel it instead; it stays for its statistics")
        db.execute("DELETE FROM mailings WHERE id = ?", (mailing_id,))
        return True


def cancel(store: Store, mailing_id: int) -> dict[str, Any] | None:
    """Stop a mailing: it will not start, or its queued messages become CANCELED. Cancelling a
    cancelled mailing changes nothing; a finished one cannot be cancelled (MailingConflict)."""
    current = get(store, mailing_id)
    if current is None or current["state"] == CANCELED_STATE:
        return current
    if not store.cancel_mailing(mailing_id):
        raise MailingConflict(f"mailing {mailing_id} has finished: nothing of it is left to cancel")
    return get(store, mailing_id)


def retry_failed(store: Store, mailing_id: int, now: float) -> int:
    """Queue the mailing's FAILED and UNDELIVERED messages again, before its end_at; a finished
    mailing given messages to send is started again."""
    row = store.connection().execute("SELECT end_at, state FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
    if row["state"] not in (STARTED, FINISHED) or row["end_at"] <= now:
        raise MailingConflict(f"mailing {mailing_id} is not running: nothing can be sent for it any more")
    queued = store.retry_failed(deadline=row["end_at"], mailing_id=mailing_id)
    if queued and row["state"] == FINISHED:
        # After the messages are queued: finish_done cannot finish it again in between.
        with store.transaction() as db:
            db.execute("UPDATE mailings SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
                       (STARTED, now, mailing_id, FINISHED))
    return queued


# --- the scheduler (run by the worker) ---

def start_due(store: Store, now: float) -> list[tuple[int, int]]:
    """Start every scheduled mailing whose start_at has come: (mailing id, messages queued)."""
    due = store.connection().execute(
        "SELECT * FROM mailings WHERE state = ? AND start_at <= ? ORDER BY start_at", (SCHEDULED, now)).fetchall()
    return [(row["id"], store.start_mailing(row["id"], row["updated_at"], now, _messages(store, dict(row), now)))
            for row in due]


def finish_done(store: Store, now: float) -> list[int]:
    """Finish every started mailing with no message left QUEUED or SENDING (one that matched no
    client at once); the worker's scheduler runs this each second. The ids finished."""
    finished = store.finish_mailings(now)
    for mailing_id in finished:
        log.info("Mailing %d finished: none of its messages is left to send", mailing_id)
    return finished


def _messages(store: Store, mailing: dict[str, Any], now: float) -> Iterator[dict[str, Any]]:
    """One message per matching client, due when the client's window opens next."""
    selector = json.loads(mailing["filter"])
    template = Template(mailing["text"], MAILING_FIELDS)
    window = (mailing["window_from"], mailing["window_to"]) if mailing["window_from"] else None
    openings: dict[str, float] = {}
    for client in store.mailing_recipients(selector.get("tags", []), selector.get("operator_codes", [])):
        zone = client["timezone"]
        if zone not in openings:
            openings[zone] = next_opening(now, zone, window)
        name = client["name"]
        yield {"client_id": client["id"], "phone": client["phone"], "timezone": zone,
               "text": template.render({"name": name, "first_name": name.split()[0] if name else ""}),
               "next_attempt_at": openings[zone], "window_from": mailing["window_from"],
               "window_to": mailing["window_to"], "deadline": mailing["end_at"]}


# --- statistics ---

def stats(store: Store, mailing_id: int) -> dict[str, Any] | None:
    db = store.connection()
    mailing = db.execute("SELECT id, state FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
    if mailing is None:
        return None
    found = dict(db.execute("SELECT status, count(*) FROM messages WHERE mailing_id = ? GROUP BY status",
                            (mailing_id,)).fetchall())
    sent = db.execute("SELECT coalesce(sum(segments), 0), min(sent_at), max(sent_at) FROM messages"
                      " WHERE mailing_id = ? AND sent_at IS NOT NULL", (mailing_id,)).fetchone()
    return _stats(mailing["id"], mailing["state"], found, sent)


def stats_all(store: Store) -> list[dict[str, Any]]:
    db = store.connection()
    counts: dict[int, dict[str, int]] = {}
    for mailing_id, status, count in db.execute("SELECT mailing_id, status, count(*) FROM messages"
                                                " WHERE mailing_id IS NOT NULL GROUP BY mailing_id, status"):
        counts.setdefault(mailing_id, {})[status] = count
    sent = {row[0]: row[1:] for row in db.execute(
        "SELECT mailing_id, coalesce(sum(segments), 0), min(sent_at), max(sent_at) FROM messages"
        " WHERE mailing_id IS NOT NULL AND sent_at IS NOT NULL GROUP BY mailing_id")}
    return [_stats(row["id"], row["state"], counts.get(row["id"], {}), sent.get(row["id"], (0, None, None)))
            for row in db.execute("SELECT id, state FROM mailings ORDER BY id")]


def _stats(mailing_id: int, state: str, found: dict[str, int], sent: tuple) -> dict[str, Any]:
    counts = {status: found.get(status, 0) for status in STATUS_NAMES}
    total = sum(counts.values())
    waiting = counts[QUEUED] + counts[SENDING]
    return {"id": mailing_id, "state": state, "total": total, "counts": counts,
            "progress": round((total - waiting) / total, 4) if total else float(state == FINISHED),
            "segments": sent[0],
            "first_sent_at": _utc(sent[1]), "last_sent_at": _utc(sent[2])}


MESSAGE_COLUMNS = ("id", "status", "phone", "text", "encoding", "segments", "attempts", "mailing_id", "client_id",
                   "user_id", "gateway_ref", "last_error", "created_at", "sent_at")


def _message(row: Any) -> dict[str, Any]:
    message = {column: row[column] for column in MESSAGE_COLUMNS}
    message["created_at"], message["sent_at"] = _utc(row["created_at"]), _utc(row["sent_at"])
    return message


def messages(store: Store, mailing_id: int, status: str | None, limit: int, offset: int
             ) -> tuple[list[dict[str, Any]], int]:
    where, params = "mailing_id = ?", [mailing_id]
    if status:
        where, params = where + " AND status = ?", params + [status]
    db = store.connection()
    total = db.execute(f"SELECT count(*) FROM messages WHERE {where}", params).fetchone()[0]
    rows = db.execute(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE {where} ORDER BY id LIMIT ? OFFSET ?",
                      (*params, limit, offset))
    return [_message(row) for row in rows], total


def message(store: Store, message_id: int) -> dict[str, Any] | None:
    row = store.connection().execute(
        f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE id = ?", (message_id,)).fetchone()
    return _message(row) if row else None


def messages_csv(store: Store, mailing_id: int, status: str | None) -> Iterator[str]:
    """The mailing's messages as CSV, a chunk of rows at a time: never the whole file in memory."""
    where, params = "mailing_id = ?", [mailing_id]
    if status:
        where, params = where + " AND status = ?", params + [status]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MESSAGE_COLUMNS)
    cursor = store.connection().execute(
        f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE {where} ORDER BY id", params)
    while rows := cursor.fetchmany(1000):
        for row in rows:
            writer.writerow([_csv_value(column, row[column]) for column in MESSAGE_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _csv_value(column: str, value: Any) -> Any:
    if column in ("created_at", "sent_at") and value is not None:
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return "" if value is None else spreadsheet_safe(value)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text instead of running it as a formula.

    OWASP's rule for CSV injection: text starting with = + - @ tab or carriage return gets a
    leading `'`. Phones in E.164 start with + and get it too, which is what a spreadsheet needs
    to show +381641234567 as that text rather than the number 381641234567. Numbers are left as
    they are. Every CSV the service writes passes its cells through here.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
