"""Phones as gateways: the domain of the `android` pull provider (not phones.py, which is about numbers).

A message routed to `android` is not sent by the worker: the Dispatcher puts it in the phones'
pool (SENDING, lease_owner PHONE_POOL, provider android; the outbox stays the one truth). A phone
running SMS Gateway for Android leases from the pool through GET /api/mobile/v1/message
(phones_api.py): each message becomes SENDING under `phone:<id>` until its lease ends
(PHONES_LEASE_SECONDS, also the validUntil the app enforces, so the phone never sends it after).

- Processed, Sent or Delivered from the phone it was handed to makes it SENT (then DELIVERED),
  even late, even after it went to another phone or back to the worker: the first phone is
  credited and nobody is handed it again. A Failed report before that sends it back to the worker,
  which routes it again (another phone, or the route's next provider), counting an attempt.
- A lease that ends unreported is waited for PHONES_GRACE_SECONDS more (a late report still
  lands on the message as it was), then the message goes back to the worker, counting an attempt;
  at SMS_MAX_ATTEMPTS it FAILS ("it may have been sent").
- No phone online, outside PHONES_HOURS, or every phone at its daily cap: the pool is empty
  (the worker routes its messages again) and the Dispatcher skips `android` like a provider down.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from config import Config
from errors import ApiError
from mailings import next_opening
from phones import mask
from store import (
    CANCELED,
    CANCELED_STATE,
    DELIVERED,
    FAILED,
    PHONE_LEASE,
    QUEUED,
    SENDING,
    SENT,
    UNDELIVERED,
    Change,
    Device,
    Store,
)

log = logging.getLogger(__name__)

PROVIDER = "android"
MAX_PULL = 100  # messages a GET /message answers at most, as the reference server; and a phone holds unreported
REHAND_SECONDS = 15.0  # an unacknowledged message is handed again this long after (the app then re-sends its state)
USER_AGENT = re.compile(r"^me\.capcom\.smsgateway/(\S{1,32})")
SEEN_WRITE_SECONDS = 5.0  # a phone's last sighting is written at most this often
READY_CHECK_SECONDS = 1.0  # how stale the Dispatcher's view of the pool's phones may be
BLOCKED_RETRY_SECONDS = 10.0  # no phone online: when the worker tries the phones again
APP_PRIORITY = {0: 1, 1: 0, 2: -1}  # store.PRIORITIES -> the app's priority (100 and up would skip its limits)
SUCCESS_STATES = ("Processed", "Sent", "Delivered")
STATES = ("online", "offline", "disabled", "revoked")  # a phone's, as PhoneSettings.state tells it


@dataclass(frozen=True)
class PhoneSettings:
    """PHONES_* (providers/android.py), checked by config."""

    private_token: str
    lease_seconds: int
    grace_seconds: int
    rate_per_minute: int
    rate_per_day: int
    hours: tuple[str, str]
    offline_seconds: int
    sim: int  # 0: the phone's default
    events_port: int
    timezone: str
    price_per_part: float
    currency: str

    @classmethod
    def of(cls, config: Config) -> PhoneSettings | None:
        """The phones' settings; None when `android` is not in SMS_PROVIDERS."""
        values = config.provider_settings.get(PROVIDER)
        if values is None:
            return None
        start, end = values["HOURS"].split("-")
        return cls(values["PRIVATE_TOKEN"], values["LEASE_SECONDS"], values["GRACE_SECONDS"],
                   values["RATE_PER_MINUTE"], values["RATE_PER_DAY"], (start, end), values["OFFLINE_SECONDS"],
                   values["SIM"], values["EVENTS_PORT"], config.default_timezone, values["PRICE_PER_PART"],
                   values["CURRENCY"])

    def day_start(self, now: float) -> float:
        """Midnight of today in DEFAULT_TIMEZONE: the per-day limit's window."""
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    def window_close(self, now: float) -> float | None:
        """When PHONES_HOURS' window that is open now closes; None if it is closed now."""
        if next_opening(now, self.timezone, self.hours) > now:
            return None
        zone = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(now, zone)
        hour, minute = map(int, self.hours[1].split(":"))
        close = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if close <= local:  # a window past midnight (22:00-06:00) seen before midnight
            close += timedelta(days=1)
        return close.timestamp()

    def online(self, device: Device, now: float) -> bool:
        return device.disabled_at is None and not device.revoked and now - device.last_seen_at <= self.offline_seconds

    def state(self, device: Device, now: float) -> str:
        """One of STATES: as the health, the console and the metrics show a phone."""
        if device.disabled_at is not None:
            return "disabled"
        if device.revoked:
            return "revoked"
        return "online" if self.online(device, now) else "offline"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def format_date(moment: float) -> str:
    """The app's date form, yyyy-MM-dd'T'HH:mm:ss.SSSXXX (milliseconds, offset)."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public_id(message: dict[str, Any]) -> str:
    """A message's id as phones see it: its id and creation time, so an id the app remembers from
    an earlier database is never taken for a new message (the app skips ids it already has)."""
    return f"{message['id']}-{int(message['created_at'] * 1000):x}"


def _message_id(text: Any) -> tuple[int, str] | None:
    match = re.fullmatch(r"([1-9]\d{0,18})-([0-9a-f]{1,16})", text) if isinstance(text, str) else None
    return (int(match.group(1)), text) if match else None


# --- the device API's side: registration, pulls and reports ---

def app_version(user_agent: str) -> str | None:
    match = USER_AGENT.match(user_agent or "")
    return match.group(1) if match else None


def _sim_cards(value: Any) -> str | None:
    """The SIM cards a phone reported, each number masked (the app masks all but the last 4 digits itself)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 8 or not all(isinstance(card, dict) for card in value):
        raise ApiError(400, "simCards must be a list of objects")
    cards = []
    for card in value:
        number = card.get("phoneNumber")
        cards.append({"slotIndex": _slot(card.get("slotIndex")), "simNumber": _slot(card.get("simNumber")),
                      "carrierName": str(card.get("carrierName") or "")[:64] or None,
                      "phoneNumber": mask(number) if isinstance(number, str) and number else None})
    return json.dumps(cards, ensure_ascii=False)


def _slot(value: Any) -> int | None:
    """A SIM's slot index or number as the app sends it (a small whole number); anything else is
    dropped, not stored: the phones' list would fail to show it."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 16 else None


def _push_token(body: dict[str, Any]) -> str | None:
    token = body.get("pushToken")
    if token is not None and not (isinstance(token, str) and len(token) <= 4096):
        raise ApiError(400, "pushToken must be a string or null")
    return token


def register(store: Store, settings: PhoneSettings, authorization: str, body: Any, user_agent: str,
             now: float) -> dict[str, str]:
    """POST /device with `Bearer <PHONES_PRIVATE_TOKEN>`: a new phone, its token shown once."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.private_token.encode()):
        raise ApiError(401, "register with Authorization: Bearer <the private token> (PHONES_PRIVATE_TOKEN)",
                       headers={"WWW-Authenticate": "Bearer"})
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not 1 <= len(body["name"]) <= 128:
        raise ApiError(400, "the body must be {name, pushToken, simCards} with name a string of 1-128 characters")
    token, password = secrets.token_urlsafe(32), secrets.token_urlsafe(12)
    login = f"phone-{secrets.token_hex(4)}"
    device_id = store.create_device(body["name"], digest(token), login, digest(password), _push_token(body),
                                    _sim_cards(body.get("simCards")) or "[]", app_version(user_agent), now)
    log.info("Phone %d registered (%s, app %s)", device_id, body["name"], app_version(user_agent) or "unknown")
    return {"id": str(device_id), "token": token, "login": login, "password": password}


def authenticate(store: Store, settings: PhoneSettings, authorization: str, user_agent: str, now: float) -> Device:
    """The phone whose device token the request carries (401 unknown or revoked: the app registers
    again; 403 disabled: the app keeps it and retries later, so a disabled phone stays out)."""
    scheme, _, given = authorization.partition(" ")
    device = store.device_by_token(digest(given.strip())) if scheme.lower() == "bearer" and given.strip() else None
    if device is None:
        raise ApiError(401, "unknown or revoked device token", headers={"WWW-Authenticate": "Bearer"})
    if device.disabled_at is not None:
        raise ApiError(403, f"phone {device.id} is disabled")
    version = app_version(user_agent)
    if now - device.last_seen_at >= SEEN_WRITE_SECONDS or (version and version != device.app_version):
        store.touch_device(device.id, version, now, now - SEEN_WRITE_SECONDS)
    return device


def update(store: Store, device: Device, body: Any, now: float) -> None:
    """PATCH /device: {id, pushToken, simCards}; another phone's id is 403."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be {id, pushToken, simCards}")
    if str(body.get("id")) != str(device.id):
        raise ApiError(403, "this token belongs to another phone")
    store.update_device(device.id, _push_token(body), _sim_cards(body.get("simCards")), now)


def pull(store: Store, settings: PhoneSettings, device: Device, now: float) -> list[dict[str, Any]]:
    """GET /message: what the phone must cancel, what it was handed REHAND_SECONDS ago or more and
    never acknowledged (the answer may have been lost), then new leases from the pool within its
    rate limits and PHONES_HOURS, as long as it holds at most MAX_PULL unreported."""
    held = store.device_messages(device.id)
    messages = [_as_app_message(m, settings, m["mailing_state"] == CANCELED_STATE) for m in held
                if m["mailing_state"] == CANCELED_STATE
                or (m["device_acked_at"] is None and m["updated_at"] <= now - REHAND_SECONDS)]
    close = settings.window_close(now)
    room = MAX_PULL - len(held)
    if close is not None and room > 0:
        minute, day = store.device_handouts(now - 60, settings.day_start(now)).get(device.id, (0, 0))
        limit = min(room, settings.rate_per_minute - minute, settings.rate_per_day - day)
        others = any(settings.online(other, now) for other in store.devices() if other.id != device.id)
        leased = store.lease_to_device(device.id, limit, now, min(now + settings.lease_seconds, close), others)
        if leased:
            log.info("Phone %d leased %d messages (%s)", device.id, len(leased),
                     ", ".join(str(m["id"]) for m in leased[:20]) + (" ..." if len(leased) > 20 else ""))
        messages += [_as_app_message(m, settings, False) for m in leased]
    return messages


def _as_app_message(message: dict[str, Any], settings: PhoneSettings, cancelling: bool) -> dict[str, Any]:
    """The app's message JSON (GatewayApi.Message); validUntil is the lease's end, so the app itself
    refuses to send it once another phone may have been handed it."""
    item: dict[str, Any] = {
        "id": public_id(message), "textMessage": {"text": message["text"]}, "phoneNumbers": [message["phone"]],
        "withDeliveryReport": True, "priority": APP_PRIORITY.get(message["priority"], 0),
        "validUntil": format_date(min(message["deadline"], message["device_lease_until"])),
        "state": "Cancelling" if cancelling else "Pending", "createdAt": format_date(message["created_at"])}
    if settings.sim:
        item["simNumber"] = settings.sim
    return item


def report(store: Store, settings: PhoneSettings, device: Device, body: Any, max_attempts: int,
           now: float) -> None:
    """PATCH /message: the app's full snapshots. Only messages handed to this phone are touched;
    unknown ids are ignored, as the reference server does."""
    if not isinstance(body, list) or len(body) > MAX_PULL:
        raise ApiError(400, f"the body must be a list of at most {MAX_PULL} message states")
    for item in body:
        if not isinstance(item, dict) or not isinstance(item.get("state"), str):
            raise ApiError(400, "each message state needs an id and a state")
        parsed = _message_id(item.get("id"))
        message = store.handed_message(device.id, parsed[0]) if parsed else None
        if message is None or public_id(message) != parsed[1]:
            continue
        _apply_report(store, settings, device, message, item, max_attempts, now)


def _apply_report(store: Store, settings: PhoneSettings, device: Device, message: dict[str, Any],
                  item: dict[str, Any], max_attempts: int, now: float) -> None:
    state, states = item["state"], item.get("states") if isinstance(item.get("states"), dict) else {}
    recipients = [r for r in item.get("recipients") or [] if isinstance(r, dict)]
    error = next((str(r["error"])[:500] for r in recipients if r.get("error")), "") or f"the phone reported {state}"
    store.record_device_states(device.id, message["id"], json.dumps(states)[:2000], now)
    holder = f"{PHONE_LEASE}{device.id}"
    where = f"message {message['id']} (phone {device.id})"
    if state in SUCCESS_STATES:
        changes = []
        if message["status"] in (SENDING, QUEUED):
            if message["status"] == SENDING and message["lease_owner"] not in (holder, None):
                log.warning("%s: reported %s late, while %s held it: it may be sent twice", where.capitalize(),
                            state, message["lease_owner"])
            segments = message["segments"] or 1
            changes.append(Change(message["id"], SENT, {
                "provider": PROVIDER, "device_id": device.id, "gateway_ref": public_id(message),
                "device_lease_until": None, "error_code": None, "last_error": None,
                "report_text": f"{state} by phone {device.id}", "cost": round(segments * settings.price_per_part, 6),
                "currency": settings.currency or None}))
            log.info("Sent %s to %s: %s", where, mask(message["phone"] or ""), state)
        elif message["status"] != SENT or message["device_id"] != device.id:
            if message["status"] == SENT:
                log.warning("%s: reported %s, but it was sent through %s already: sent twice", where.capitalize(),
                            state, f"phone {message['device_id']}" if message["device_id"] else message["provider"])
            return
        if state == "Delivered":
            changes.append(Change(message["id"], DELIVERED, {"report_text": f"Delivered, phone {device.id}"}))
        store.apply(changes)
    elif state == "Failed":
        if message["status"] == SENT and message["device_id"] == device.id:
            store.apply([Change(message["id"], UNDELIVERED if "Sent" in states else FAILED,
                                {"error_code": "phone", "last_error": error, "report_text": error})])
        elif message["status"] == SENDING and message["lease_owner"] == holder:
            if message["attempts"] + 1 >= max_attempts:
                change = Change(message["id"], FAILED, {"error_code": "phone", "last_error": f"gave up after"
                                f" {message['attempts'] + 1} attempts: phone {device.id}: {error}"}, count_attempt=1)
            else:  # back to the worker: another phone, or the route's next provider
                change = Change(message["id"], SENDING, {"lease_owner": None, "lease_until": now,
                                                         "device_lease_until": None, "error_code": "phone",
                                                         "last_error": f"phone {device.id}: {error}"}, count_attempt=1)
            store.apply([change], holder)
            log.warning("%s failed on the phone: %s", where.capitalize(), error)
    elif state == "Cancelled" and message["status"] == SENDING and message["lease_owner"] == holder:
        store.apply([Change(message["id"], CANCELED, {"last_error": "cancelled on the phone"})], holder)
        log.info("%s cancelled on the phone", where.capitalize())


# --- the worker's side: the pool as a route sees it, and its upkeep ---

class PhonePool:
    """The phones as the Dispatcher sees them: whether any can take a message now, and the pool's upkeep."""

    def __init__(self, store: Store, settings: PhoneSettings):
        self.store = store
        self.settings = settings
        self._blocked: tuple[float, str] | None = None
        self._read_at = -READY_CHECK_SECONDS
        self._lock = threading.Lock()

    def blocked(self, now: float) -> tuple[float, str] | None:
        """(until when, why) no phone can take a message now; None if one can. Read at most once a second."""
        with self._lock:
            if time.monotonic() >= self._read_at + READY_CHECK_SECONDS:
                self._blocked = self._why_blocked(now)
                self._read_at = time.monotonic()
            return self._blocked

    def _why_blocked(self, now: float) -> tuple[float, str] | None:
        settings = self.settings
        opening = next_opening(now, settings.timezone, settings.hours)
        if opening > now:
            return opening, f"{PROVIDER}: outside PHONES_HOURS {'-'.join(settings.hours)}"
        online = [device for device in self.store.devices() if settings.online(device, now)]
        if not online:
            return now + BLOCKED_RETRY_SECONDS, f"{PROVIDER}: no phone online"
        handed = self.store.device_handouts(now - 60, settings.day_start(now))
        if all(handed.get(device.id, (0, 0))[1] >= settings.rate_per_day for device in online):
            return settings.day_start(now) + 86400, f"{PROVIDER}: every phone online sent its PHONES_RATE_PER_DAY"
        return None

    def sweep(self, now: float, max_attempts: int) -> None:
        """Once a second in the worker: leases past their grace go back to the worker (or FAIL at the
        attempts' cap); a cancelled mailing's waiting messages are CANCELED; with no phone able to
        take them, the waiting messages go back to the worker to be routed again."""
        moved, failed = self.store.expire_device_leases(now - self.settings.grace_seconds, now, max_attempts)
        if moved or failed:
            log.warning("Phones did not report %d messages within their lease and grace: %d go to another phone or"
                        " provider, %d FAILED (attempts used up)", moved + failed, moved, failed)
        cancelled = self.store.cancel_phone_pool(now)
        if cancelled:
            log.info("%d messages waiting for a phone CANCELED: their mailing was cancelled", cancelled)
        why = self.blocked(now)
        if why and (released := self.store.release_phone_pool(now)):
            log.warning("%d messages waiting for a phone are routed again: %s", released, why[1])


def health(store: Store, settings: PhoneSettings, now: float) -> list[dict[str, Any]]:
    """Every phone: its state, when last seen, its event stream, app version, and today's figures."""
    day = settings.day_start(now)
    handed = store.device_handouts(now - 60, day)
    activity = store.device_activity(day)
    phones = []
    for device in store.devices():
        state = settings.state(device, now)
        sent, failed = activity.get(device.id, (0, 0))
        minute, today = handed.get(device.id, (0, 0))
        phones.append({"id": device.id, "name": device.name, "state": state,
                       "last_seen": format_date(device.last_seen_at),
                       "events_connected": bool(device.events_until and device.events_until > now),
                       "app_version": device.app_version, "battery": None, "sim_cards": json.loads(device.sim_cards),
                       "sent_today": sent, "failed_today": failed, "handed_last_minute": minute,
                       "handed_today": today})
    return phones
