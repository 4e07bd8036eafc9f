"""The MoyKlass CRM API client: keep-alive connections, timeouts, bounded retries, a shared rate limit."""
from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

import metrics
from http_client import HttpAnswer, KeepAliveClient, Unreachable
from locks import RateLimiter, WouldWait
from logs import masking_filter
from token_store import Token, TokenKeeper, TokenStore, parse_expires_at

log = logging.getLogger(__name__)

ATTEMPTS = 3
BACKOFF_SECONDS = 0.25
MAX_RETRY_AFTER_SECONDS = 5.0
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
# The spec's userIds: at most 100 ids (maxItems) of int32, in one query parameter as a comma
# list (style form, explode false); limit defaults to 100 but is sent, so that all come back.
USER_IDS_PER_CALL = 100
MOYKLASS_MAX_ID = 2_147_483_647  # its ids are int32 (the spec)
USER_CACHE_MAX_USERS = 10_000


class MoyKlassError(Exception):
    """MoyKlass answered, but not with what we asked for (bad API key, unexpected 4xx)."""


class MoyKlassUnavailable(MoyKlassError):
    """MoyKlass could not be reached, timed out, or kept failing after retries."""


class UserNotFound(MoyKlassError):
    pass


class LessonNotFound(MoyKlassError):
    pass


class UserCache:
    """Users looked up in the last `seconds` (0: none kept), at most `max_users`, in this process.

    A lesson reminder or a burst of webhooks names the same students again within minutes, and
    every lookup spends one of the 7 requests a second MoyKlass allows the whole company. Users
    not found are not kept: a student may be added a moment later. Copies go in and out, so a
    caller changing its user changes no one else's.
    """

    def __init__(self, seconds: float, max_users: int = USER_CACHE_MAX_USERS):
        self.seconds = seconds
        self.max_users = max_users
        self._users: OrderedDict[int, tuple[float, dict[str, Any]]] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def get(self, user_id: int) -> dict[str, Any] | None:
        """The user if it was looked up less than `seconds` ago, else None."""
        with self._lock:
            entry = self._users.get(user_id)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._users[user_id]
                return None
            return copy.deepcopy(entry[1])

    def put(self, user_id: int, user: dict[str, Any]) -> None:
        """Keep `user` for `seconds`; past `max_users`, the oldest entries (the first to expire) go."""
        if self.seconds <= 0:
            return
        with self._lock:
            self._users[user_id] = (time.monotonic() + self.seconds, copy.deepcopy(user))
            self._users.move_to_end(user_id)
            while len(self._users) > self.max_users:
                self._users.popitem(last=False)


def _error_text(response: HttpAnswer) -> str:
    """MoyKlass errors are `{"code", "message"}`; fall back to the HTTP status."""
    try:
        body = response.json()
        return f"{response.status} {body.get('code', '')}: {body.get('message', '')}".strip()
    except (ValueError, AttributeError):
        return f"HTTP {response.status}"


class MoyKlassClient:
    def __init__(self, base_url: str, api_key: str, token_keeper: TokenKeeper, rate_limiter: RateLimiter,
                 timeouts: tuple[float, float], user_cache_seconds: float = 300):
        self.base_url = base_url
        self._api_key = api_key
        self._limiter = rate_limiter
        self._http = KeepAliveClient(base_url, timeouts)
        self.tokens = TokenStore(token_keeper, self._fetch_token)
        self.user_cache = UserCache(user_cache_seconds)

    def get_user(self, user_id: int, give_up_at: float | None = None, fresh: bool = False) -> dict[str, Any]:
        """The MoyKlass User object; UserNotFound on 404. With `give_up_at` (monotonic), a wait
        for the rate limit or a retry that would end past it raises WouldWait instead. A user
        looked up within USER_CACHE_SECONDS is answered from the cache, unless `fresh`."""
        user = None if fresh else self.user_cache.get(user_id)
        if user is not None:
            return user
        response = self._get(f"/company/users/{user_id}", give_up_at=give_up_at)
        if response.status == 404:
            raise UserNotFound(f"MoyKlass has no user {user_id}")
        user = _normalised_user(self._json(response))
        self.user_cache.put(user_id, user)
        return user

    def get_users(self, user_ids: list[int], give_up_at: float | None = None) -> dict[int, dict[str, Any]]:
        """The users found, by id; ids MoyKlass does not know are absent. Cached users first, the
        rest in one `GET /company/users?userIds=…` per 100 ids: 700 students a second at most,
        where one call per student would take 100 s for 700. `give_up_at` as in get_user."""
        found: dict[int, dict[str, Any]] = {}
        wanted: list[int] = []
        for user_id in dict.fromkeys(user_ids):
            if not 1 <= user_id <= MOYKLASS_MAX_ID:  # MoyKlass cannot have it
                continue
            user = self.user_cache.get(user_id)
            if user is not None:
                found[user_id] = user
            else:
                wanted.append(user_id)
        for start in range(0, len(wanted), USER_IDS_PER_CALL):
            batch = wanted[start:start + USER_IDS_PER_CALL]
            query = {"userIds": ",".join(map(str, batch)), "limit": len(batch)}
            page = self._json(self._get("/company/users", query, give_up_at=give_up_at))
            users = page.get("users")
            if not isinstance(users, list):
                raise MoyKlassUnavailable("MoyKlass answered a users list without `users`")
            asked = set(batch)
            for user in users:
                if isinstance(user, dict) and user.get("id") in asked:
                    user = _normalised_user(user)
                    found[user["id"]] = user
                    self.user_cache.put(user["id"], user)
        return found

    def get_lesson(self, lesson_id: int, give_up_at: float | None = None) -> dict[str, Any]:
        """The MoyKlass Lesson with its `records` (the students booked on it); LessonNotFound on
        404. `give_up_at` as in get_user."""
        response = self._get(f"/company/lessons/{lesson_id}", {"includeRecords": "true"},
                                         give_up_at=give_up_at)
        if response.status == 404:
            raise LessonNotFound(f"MoyKlass has no lesson {lesson_id}")
        return self._json(response)

    def list_users(self, offset: int, limit: int, client_state_ids: list[int] | None = None) -> dict[str, Any]:
        """A page of students: `{"users": [...], "stats": {"totalItems": N}}` (limit at most 500)."""
        query: dict[str, Any] = {"offset": offset, "limit": limit}
        if client_state_ids:
            query["clientStateId"] = ",".join(map(str, client_state_ids))
        return self._json(self._get("/company/users", query))

    def _get(self, path: str, query: dict[str, Any] | None = None, give_up_at: float | None = None) -> HttpAnswer:
        """A read with the access token, fetched again once if MoyKlass rejects it. In `query`
        the spec's array parameters are comma lists (style form, explode false), the commas
        sent as they are, not as %2C."""
        if query:
            path += "?" + urlencode(query, safe=",")
        token = self.tokens.get()
        response = self._send("GET", path, {"x-access-token": token.value}, give_up_at=give_up_at)
        if response.status == 401:
            log.warning("MoyKlass rejected the access token; fetching a new one and retrying once")
            self.tokens.invalidate(token)
            token = self.tokens.get()
            response = self._send("GET", path, {"x-access-token": token.value}, give_up_at=give_up_at)
            if response.status == 401:
                raise MoyKlassError(f"MoyKlass rejected a fresh access token ({_error_text(response)})")
        return response

    def _fetch_token(self) -> Token:
        response = self._send("POST", "/company/auth/getToken", {"Content-Type": "application/json"},
                              json.dumps({"apiKey": self._api_key}).encode())
        if response.status in (400, 401, 403):
            raise MoyKlassError(f"MoyKlass rejected API_KEY ({_error_text(response)})")
        data = self._json(response)
        try:
            token = Token(str(data["accessToken"]), parse_expires_at(str(data["expiresAt"])))
        except (KeyError, ValueError) as error:
            raise MoyKlassUnavailable(f"MoyKlass sent a token answer we cannot read ({error})")
        masking_filter.add_secret(token.value)
        return token

    def _json(self, response: HttpAnswer) -> dict[str, Any]:
        if response.status >= 400:
            raise MoyKlassError(f"MoyKlass answered {_error_text(response)}")
        try:
            data = response.json()
        except ValueError:
            raise MoyKlassUnavailable(
                f"MoyKlass answered HTTP {response.status} with a body that is not JSON")
        if not isinstance(data, dict):
            raise MoyKlassUnavailable("MoyKlass answered with JSON that is not an object")
        return data

    def _send(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
              give_up_at: float | None = None) -> HttpAnswer:
        """One call, retried on connection errors, 429 and 5xx only, within MoyKlass' rate limit;
        no wait (for the limit or before a retry) lasts past `give_up_at`. Every call MoyKlass
        allows is a read (or a token, which may be asked again), so a retry cannot do harm."""
        attempt = 1
        while True:
            self._limiter.wait(give_up_at)
            try:
                response = self._http.request(method, self._http.path + path, headers, body)
            except Unreachable as error:
                metrics.moyklass_answer(None)
                if error.code == "timeout":
                    raise MoyKlassUnavailable(f"MoyKlass did not answer within {self._http.total_timeout:g} s")
                failure = f"MoyKlass: {error}"
                delay = BACKOFF_SECONDS * 2 ** (attempt - 1)
            else:
                metrics.moyklass_answer(response.status)
                if response.status not in RETRIED_STATUSES:
                    return response
                failure = f"MoyKlass kept failing ({_error_text(response)})"
                delay = _retry_after(response) or BACKOFF_SECONDS * 2 ** (attempt - 1)
            if attempt == ATTEMPTS:
                raise MoyKlassUnavailable(failure)
            if give_up_at is not None and time.monotonic() + delay > give_up_at:
                raise WouldWait(f"{failure}; the next try is {delay:.2f} s away")
            log.warning("MoyKlass %s %s failed (attempt %d of %d); retrying in %.2f s",
                        method, path, attempt, ATTEMPTS, delay)
            time.sleep(delay)
            attempt += 1


def _retry_after(response: HttpAnswer) -> float | None:
    try:
        return min(float(response.headers.get("Retry-After", "")), MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        return None


def _normalised_user(user: dict[str, Any]) -> dict[str, Any]:
    """The user with its phone as a digit string: the spec's schema says string, but its own
    example (and so perhaps MoyKlass) gives a JSON number such as 79001234567."""
    phone = user.get("phone")
    if isinstance(phone, int) and not isinstance(phone, bool):
        return {**user, "phone": str(phone)}
    return user


def template_fields(user: dict[str, Any]) -> dict[str, object]:
    """The values SMS templates may use, taken from a MoyKlass User."""
    name = str(user.get("name") or "").strip()
    return {
        "name": name,
        "first_name": name.split()[0] if name else "",
        "user_id": user.get("id"),
        "email": user.get("email") or "",
        "balans": user.get("balans", ""),
    }
