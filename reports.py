"""Reports over every message, of any source: a summary per day of the school's time zone
(DEFAULT_TIMEZONE) and provider, and the messages themselves as CSV.

A message counts on the local day it was created (queued). The database groups messages by UTC
quarter hour, which works on either backend without its own time zone rules; every UTC offset in
use is a whole number of quarter hours, so each quarter hour lies within one local day, and the
quarter hours are added up here into days.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from mailings import spreadsheet_safe
from store import REPORT_BUCKET_SECONDS, REPORT_COLUMNS, Store

MAX_DAYS = 366
CSV_HEADER = tuple("error" if column == "last_error" else column for column in REPORT_COLUMNS)
COUNTED = ("total", "sent", "delivered", "failed", "parts")


def bounds(first: date, last: date, timezone: str) -> tuple[float, float]:
    """[start, end) in seconds since the epoch: from the local midnight starting `first` to the one ending `last`."""
    zone = ZoneInfo(timezone)
    return (datetime.combine(first, clock_time.min, zone).timestamp(),
            datetime.combine(last + timedelta(days=1), clock_time.min, zone).timestamp())


def summary(store: Store, first: date, last: date, timezone: str) -> list[dict[str, Any]]:
    """A line per local day and provider (None: messages not sent, or not yet), by day."""
    zone = ZoneInfo(timezone)
    lines: dict[tuple[date, str | None], dict[str, Any]] = {}
    for bucket in store.report_buckets(*bounds(first, last, timezone)):
        day = datetime.fromtimestamp(bucket.bucket * REPORT_BUCKET_SECONDS, zone).date()
        line = lines.setdefault((day, bucket.provider), {"day": day, "provider": bucket.provider, "cost": 0.0,
                                                          **dict.fromkeys(COUNTED, 0)})
        for name in COUNTED:
            line[name] += getattr(bucket, name)
        line["cost"] += bucket.cost
    return [line | {"cost": round(line["cost"], 4)}
            for _key, line in sorted(lines.items(), key=lambda item: (item[0][0], item[0][1] or ""))]


def messages_csv(store: Store, first: date, last: date, timezone: str) -> Iterator[str]:
    """The messages created in those local days, oldest first, as CSV in chunks (never the whole
    file in memory); times in the school's time zone; every cell safe from spreadsheet formulas."""
    zone = ZoneInfo(timezone)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    for rows in store.report_message_chunks(*bounds(first, last, timezone)):
        for row in rows:
            writer.writerow([_cell(column, row[column], zone) for column in REPORT_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _cell(column: str, value: Any, zone: ZoneInfo) -> Any:
    if value is None:
        return ""
    if column in ("created_at", "sent_at"):
        return datetime.fromtimestamp(value, zone).isoformat(timespec="seconds")
    return spreadsheet_safe(value)
