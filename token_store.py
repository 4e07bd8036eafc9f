"""The MoyKlass access token, kept in one place and shared by every process of the service.

A token lives 7 days, so all gunicorn workers and the worker process share one: it is read
from its keeper (the file TOKEN_FILE_PATH; on PostgreSQL a row, shared by every host), fetched
only when missing or near expiry, and the fetch happens under the keeper's exclusive lock so
that processes starting together fetch one token between them.
A token MoyKlass issues already expired by this host's clock (the clock is ahead of MoyKlass',
or MoyKlass sent an odd expiry) is kept until MoyKlass answers 401, or every call would fetch one.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from locks import FileLock

log = logging.getLogger(__name__)

EXPIRY_MARGIN = timedelta(minutes=10)


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: datetime
    until_rejected: bool = False  # issued already past its expiry here: used until MoyKlass answers 401

    def usable(self, now: datetime | None = None) -> bool:
        return self.until_rejected or (now or datetime.now(UTC)) < self.expires_at - EXPIRY_MARGIN


def parse_expires_at(raw: str) -> datetime:
    """Parse both forms MoyKlass sends: `2026-11-30T10:00:00+03:00` and `2026-11-30T07:00:00.000Z`."""
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


class TokenKeeper(Protocol):
    """Where the token is kept for every process to share, and the lock its renewal holds."""

    def held(self) -> AbstractContextManager[Any]: ...

    def read(self) -> Token | None: ...

    def write(self, token: Token) -> None: ...

    def forget(self) -> None: ...


class TokenStore:
    """Returns a usable token, fetching a new one with `fetch` only when none is usable."""

    def __init__(self, keeper: TokenKeeper, fetch: Callable[[], Token]):
        self._keeper = keeper
        self._fetch = fetch
        self._cached: Token | None = None

    def get(self) -> Token:
        cached = self._cached
        if cached and cached.usable():
            return cached
        with self._keeper.held():
            token = self._keeper.read()
            if token is None or not token.usable():
                token = self._fetch_new()
                self._keeper.write(token)
            self._cached = token
            return token

    def _fetch_new(self) -> Token:
        """A new token; one that is not usable already when issued is marked `until_rejected`,
        with one warning per such token, since expiry cannot tell when it ends."""
        token = self._fetch()
        now = datetime.now(UTC)
        if token.usable(now):
            log.info("Fetched a new MoyKlass token, valid until %s", token.expires_at.isoformat())
            return token
        behind = (now - token.expires_at).total_seconds()
        log.warning("MoyKlass issued a token that expires at %s, %s this host's clock: the host's clock"
                    " seems to be ahead; using the token until MoyKlass refuses it", token.expires_at.isoformat(),
                    f"{behind:.0f} s before" if behind >= 0 else f"only {-behind:.0f} s after")
        return replace(token, until_rejected=True)

    def invalidate(self, rejected: Token) -> None:
        """Forget `rejected` (MoyKlass answered 401 to it) unless another process already replaced it."""
        with self._keeper.held():
            if self._cached == rejected:
                self._cached = None
            current = self._keeper.read()
            if current is not None and current.value == rejected.value:
                self._keeper.forget()


class FileTokenKeeper:
    """The token in a 0600 JSON file, replaced atomically, renewed under a FileLock beside it."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = FileLock(path.with_name(path.name + ".lock"))

    def held(self) -> AbstractContextManager[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self._lock.hold()

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)

    def read(self) -> Token | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Token(str(data["accessToken"]), parse_expires_at(data["expiresAt"]),
                         data.get("untilRejected") is True)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            log.warning("Token file %s is corrupt (%s); fetching a new token", self.path, error)
            return None

    def write(self, token: Token) -> None:
        data = {"accessToken": token.value, "expiresAt": token.expires_at.isoformat(),
                "untilRejected": token.until_rejected}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".token-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

