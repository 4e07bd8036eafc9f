"""The dashboard's figures, in the school's time zone (DEFAULT_TIMEZONE), from the store."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from phones import mask, mask_phones_in
from store import DayActivity, Store

DAYS = 14
RECENT_FAILURES = 10


@dataclass(frozen=True)
class Day:
    day: date
    activity: DayActivity


@dataclass(frozen=True)
class Dashboard:
    today: DayActivity
    queued: int  # QUEUED and SENDING now
    oldest_queued_at: float | None
    days: list[Day]  # the last DAYS days, today last
    most_sent: int  # the chart's scale
    failures: list[dict[str, Any]]  # phones and errors masked


def day_starts(timezone: str, now: float, days: int = DAYS) -> list[datetime]:
    """Local midnights: the first of `days` days ending today, ..., and tomorrow's (days + 1 of them)."""
    zone = ZoneInfo(timezone)
    today = datetime.fromtimestamp(now, zone).date()
    return [datetime.combine(today - timedelta(days=back), time(), zone) for back in range(days - 1, -2, -1)]


def figures(store: Store, timezone: str, now: float) -> Dashboard:
    starts = day_starts(timezone, now)
    activity = store.daily_activity([start.timestamp() for start in starts])
    failures = [failure | {"phone": mask(failure["phone"]) if failure["phone"] else None,
                           "last_error": mask_phones_in(failure["last_error"] or "")}
                for failure in store.recent_failures(starts[0].timestamp(), RECENT_FAILURES)]
    return Dashboard(today=activity[-1], queued=store.waiting_count(),
                     oldest_queued_at=store.oldest_queued_at(),
                     days=[Day(start.date(), day) for start, day in zip(starts[:-1], activity, strict=True)],
                     most_sent=max(day.sent for day in activity), failures=failures)
