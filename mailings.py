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
import string
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from config import DEFAULT_ROUTE, Config
from models import MAILING_FIELDS, MailingCreate
from store import (
    CANCELED_STATE,
    FINISHED,
    MESSAGE_COLUMNS,
    QUEUED,
    SCHEDULED,
    SENDING,
    STARTED,
    STATUSES,
    CostLine,
    FanOut,
    Mailing,
    MailingProgress,
    Store,
)
from texts import Template, measure

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


def _public(mailing: Mailing) -> dict[str, Any]:
    window = {"from": mailing.window_from, "to": mailing.window_to} if mailing.window else None
    return {"id": mailing.id, "start_at": _utc(mailing.start_at), "end_at": _utc(mailing.end_at), "text": mailing.text,
            "filter": json.loads(mailing.filter), "window": window, "state": mailing.state,
            "created_at": _utc(mailing.created_at), "started_at": _utc(mailing.started_at)}


def _utc(moment: float | None) -> datetime | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC)


def _columns(mailing: MailingCreate) -> dict[str, Any]:
    """The mailing as the store keeps it (MAILING_COLUMNS)."""
    window = mailing.window
    return {"start_at": mailing.start_at.timestamp(), "end_at": mailing.end_at.timestamp(), "text": mailing.text,
            "filter": mailing.filter.model_dump_json(), "window_from": window.from_ if window else None,
            "window_to": window.to if window else None}


def create(store: Store, mailing: MailingCreate) -> dict[str, Any]:
    return _public(store.create_mailing(_columns(mailing)))


def estimate(store: Store, mailing: MailingCreate, config: Config) -> dict[str, Any]:
    """An estimate of a mailing's size and cost: the clients its filter matches now, each message's
    SMS parts counted with {name} and {first_name} empty (a long name may add a part), each message
    at the price per part of the first provider of its route (a failover may send it through another)."""
    parts = measure(Template(mailing.text, MAILING_FIELDS).render(dict.fromkeys(MAILING_FIELDS, ""))).segments
    prefixed = [(prefix, providers) for prefix, providers in config.sms_routes if prefix != DEFAULT_ROUTE]
    counts = store.count_clients_by_prefix(mailing.filter.tags, mailing.filter.operator_codes,
                                           [prefix for prefix, _ in prefixed])
    cost: dict[str, float] = {}
    for route, recipients in zip([*(providers for _, providers in prefixed), config.route_for("")], counts,
                                 strict=True):
        settings = config.provider_settings[route[0]]
        if settings["CURRENCY"] and recipients:
            cost[settings["CURRENCY"]] = cost.get(settings["CURRENCY"], 0.0) + recipients * parts * settings[
                "PRICE_PER_PART"]
    return {"recipients": sum(counts), "parts_per_message": parts, "parts": sum(counts) * parts,
            "cost": {currency: round(amount, 4) for currency, amount in cost.items()}}


def get(store: Store, mailing_id: int) -> dict[str, Any] | None:
    mailing = store.mailing(mailing_id)
    return _public(mailing) if mailing else None


def list_all(store: Store) -> list[dict[str, Any]]:
    return [_public(mailing) for mailing in store.mailings()]


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
    if not store.change_scheduled_mailing(mailing_id, _columns(mailing)):
        raise MailingConflict(f"mailing {mailing_id} started meanwhile: it can no longer be changed")
    return get(store, mailing_id)


def delete(store: Store, mailing_id: int) -> bool:
    """Delete a mailing that never started; one that did keeps its record for its messages' sake."""
    deleted = store.delete_unstarted_mailing(mailing_id)
    if deleted is None:
        return False
    if not deleted:
        raise MailingConflict(f"mailing {mailing_id} has started: cancel it instead; it stays for its statistics")
    return True


def cancel(store: Store, mailing_id: int) -> tuple[dict[str, Any] | None, bool]:
    """Stop a mailing: it will not start, or its queued messages become CANCELED. (The mailing, or
    None if there is none; whether this call cancelled it: cancelling a cancelled mailing changes
    nothing.) A finished one cannot be cancelled (MailingConflict)."""
    current = get(store, mailing_id)
    if current is None or current["state"] == CANCELED_STATE:
        return current, False
    if not store.cancel_mailing(mailing_id):
        raise MailingConflict(f"mailing {mailing_id} has finished: nothing of it is left to cancel")
    return get(store, mailing_id), True


def retry_failed(store: Store, mailing_id: int, now: float, message_id: int | None = None) -> int:
    """Queue the mailing's FAILED and UNDELIVERED messages (or only its message `message_id`) again,
    before its end_at; a finished mailing given messages to send is started again."""
    mailing = store.mailing(mailing_id)
    if mailing.state not in (STARTED, FINISHED) or mailing.end_at <= now:
        raise MailingConflict(f"mailing {mailing_id} is not running: nothing can be sent for it any more")
    queued = store.retry_failed(deadline=mailing.end_at, mailing_id=mailing_id, message_id=message_id)
    if queued and mailing.state == FINISHED:
        # After the messages are queued: finish_done cannot finish it again in between.
        store.restart_finished_mailing(mailing_id, now)
    return queued


# --- the scheduler (run by the worker) ---

def start_due(store: Store, now: float) -> list[tuple[int, int]]:
    """Start every scheduled mailing whose start_at has come: (mailing id, messages queued)."""
    return [(mailing.id, store.start_mailing(mailing.id, mailing.updated_at, now, _fan_out(mailing, now)))
            for mailing in store.due_mailings(now)]


def finish_done(store: Store, now: float) -> list[int]:
    """Finish every started mailing with no message left QUEUED or SENDING (one that matched no
    client at once); the worker's scheduler runs this each second. The ids finished."""
    finished = store.finish_mailings(now)
    for mailing_id in finished:
        log.info("Mailing %d finished: none of its messages is left to send", mailing_id)
    return finished


def _fan_out(mailing: Mailing, now: float) -> FanOut:
    """One message per matching client, due when the client's window opens next."""
    selector = json.loads(mailing.filter)
    template = Template(mailing.text, MAILING_FIELDS)
    return FanOut(selector.get("tags", []), selector.get("operator_codes", []),
                  [(literal, placeholder) for literal, placeholder, _, _ in string.Formatter().parse(template.source)],
                  partial(personal_text, template), partial(next_opening, now, window=mailing.window),
                  mailing.window_from, mailing.window_to, mailing.end_at)


def personal_text(template: Template, name: str) -> str:
    """A mailing's text for a client of this name (the console's preview shows it for a sample client)."""
    return template.render({"name": name, "first_name": name.split()[0] if name else ""})


# --- statistics ---

def stats(store: Store, mailing_id: int) -> dict[str, Any] | None:
    progress = store.mailing_progress(mailing_id)
    return _stats(progress, store.mailing_costs(mailing_id)) if progress else None


def stats_all(store: Store) -> list[dict[str, Any]]:
    costs: dict[int, list[CostLine]] = {}
    for line in store.mailing_costs():
        costs.setdefault(line.group, []).append(line)
    return [_stats(progress, costs.get(progress.mailing_id, [])) for progress in store.mailings_progress()]


def _stats(progress: MailingProgress, costs: list[CostLine]) -> dict[str, Any]:
    counts = {status: progress.counts.get(status, 0) for status in STATUSES}
    total = sum(counts.values())
    waiting = counts[QUEUED] + counts[SENDING]
    return {"id": progress.mailing_id, "state": progress.state, "total": total, "counts": counts,
            "progress": round((total - waiting) / total, 4) if total else float(progress.state == FINISHED),
            "segments": progress.segments,
            "first_sent_at": _utc(progress.first_sent_at), "last_sent_at": _utc(progress.last_sent_at),
            **cost_summary(costs)}


def cost_summary(lines: list[CostLine]) -> dict[str, Any]:
    """`cost`: the total by currency (providers without a price left out); `by_provider`: the
    messages sent, their parts and cost through each provider."""
    total: dict[str, float] = {}
    for line in lines:
        if line.currency:
            total[line.currency] = total.get(line.currency, 0.0) + line.cost
    return {"cost": {currency: round(amount, 4) for currency, amount in total.items()},
            "by_provider": [{"provider": line.provider, "messages": line.messages, "parts": line.parts,
                             "cost": round(line.cost, 4), "currency": line.currency or None} for line in lines]}


def _message(row: Mapping[str, Any]) -> dict[str, Any]:
    message = {column: row[column] for column in MESSAGE_COLUMNS}
    message["created_at"], message["sent_at"] = _utc(row["created_at"]), _utc(row["sent_at"])
    return message


def messages(store: Store, mailing_id: int, status: str | None, limit: int, offset: int
             ) -> tuple[list[dict[str, Any]], int]:
    rows, total = store.mailing_messages(mailing_id, status, limit, offset)
    return [_message(row) for row in rows], total


def message(store: Store, message_id: int) -> dict[str, Any] | None:
    row = store.message(message_id)
    return _message(row) if row else None


def messages_csv(store: Store, mailing_id: int, status: str | None) -> Iterator[str]:
    """The mailing's messages as CSV, a chunk of rows at a time: never the whole file in memory."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MESSAGE_COLUMNS)
    for rows in store.mailing_message_chunks(mailing_id, status):
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
