"""API keys for /api/v1: shown once at creation, stored only as their SHA-256, with scopes and a
daily quota counted in the database (so every gunicorn worker counts against the same one)."""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from store import ApiKey, Store

# templates:write writes drafts; templates:approve approves them, and a template it writes is approved at once.
# admin: the phones (/api/v1/phones: list, disable, revoke).
SCOPES = ("read", "clients:write", "mailings:write", "messages:send", "templates:write", "templates:approve",
          "admin")
DEFAULT_DAILY_QUOTA = 10_000
KEY_PREFIX = "sba_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(store: Store, name: str, scopes: list[str], daily_quota: int | None) -> tuple[int, str]:
    """A new key: (id, the key itself), which is not stored and cannot be shown again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return store.create_api_key(name, _digest(key), scopes, daily_quota), key


def list_all(store: Store) -> list[dict[str, Any]]:
    return store.api_keys()


def revoke(store: Store, key_id: int) -> bool:
    return store.revoke_api_key(key_id)


def find(store: Store, key: str) -> ApiKey | None:
    """The active key with this value; nothing is counted (see `count_request`)."""
    return store.active_api_key(_digest(key))


def count_request(store: Store, key_id: int) -> float | None:
    """Count one served request against the key's quota for its UTC day: None when it is
    counted, else the seconds until the quota renews."""
    now = datetime.now(UTC)
    if store.count_api_key_request(key_id, now.date().isoformat()):
        return None
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1.0, (midnight - now).total_seconds())
