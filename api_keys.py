"""API keys for /api/v1: shown once at creation, stored only as their SHA-256, with scopes and a
daily quota counted in the database (so every gunicorn worker counts against the same one)."""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from store import Store

SCOPES = ("read", "clients:write", "mailings:write", "messages:send")
DEFAULT_DAILY_QUOTA = 10_000
KEY_PREFIX = "sba_"


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    scopes: frozenset[str]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(store: Store, name: str, scopes: list[str], daily_quota: int | None) -> tuple[int, str]:
    """A new key: (id, the key itself), which is not stored and cannot be shown again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with store.transaction() as db:
        cursor = db.execute("INSERT INTO api_keys (name, key_hash, scopes, daily_quota, created_at)"
                            " VALUES (?, ?, ?, ?, ?)", (name, _digest(key), " ".join(scopes), daily_quota, time.time()))
    return cursor.lastrowid, key


def list_all(store: Store) -> list[dict]:
    return [dict(row) for row in store.connection().execute(
        "SELECT id, name, scopes, daily_quota, created_at, revoked_at, quota_day, quota_used"
        " FROM api_keys ORDER BY id")]


def revoke(store: Store, key_id: int) -> bool:
    with store.transaction() as db:
        return db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                          (time.time(), key_id)).rowcount == 1


def find(store: Store, key: str) -> ApiKey | None:
    """The active key with this value; nothing is counted (see `count_request`)."""
    row = store.connection().execute("SELECT id, name, scopes FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                                     (_digest(key),)).fetchone()
    return ApiKey(row["id"], row["name"], frozenset(row["scopes"].split())) if row else None


def count_request(store: Store, key_id: int) -> float | None:
    """Count one served request against the key's quota for its UTC day: None when it is
    counted, else the seconds until the quota renews.

    One UPDATE that increments only while under the quota, so processes counting at the same
    time cannot both take the last request.
    """
    now = datetime.now(UTC)
    today = now.date().isoformat()
    with store.transaction() as db:
        counted = db.execute(
            "UPDATE api_keys SET quota_used = CASE WHEN quota_day = :today THEN quota_used + 1 ELSE 1 END,"
            " quota_day = :today WHERE id = :id AND (daily_quota IS NULL"
            " OR CASE WHEN quota_day = :today THEN quota_used ELSE 0 END < daily_quota)",
            {"today": today, "id": key_id}).rowcount
    if counted:
        return None
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1.0, (midnight - now).total_seconds())
