"""One attempt at one leased message: resolve the phone, render, send, record the verdict.

Used by the worker for every queued message, and by the webhook in sync mode for the first
attempt. Whatever happens, the message leaves in a status the outbox can carry on from:
SENT, FAILED (permanent), EXPIRED, CANCELED, or QUEUED again with the time of its next attempt.

Just before the send the lease is checked (`_may_not_send`, reading `Store.lease_state` unless
the lease as its holder took it settles it): a message another worker took over, or whose
mailing was cancelled, is not sent, and a send starts only while the lease outlives the send's
whole deadline (HTTP_TIMEOUT), so it can never be re-claimed mid-send.
"""
from __future__ import annotations

import enum
import hashlib
import json
import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import metrics
from config import Config
from devices import PhonePool, PhoneSettings
from events import family_of
from locks import WouldWait
from mailings import next_opening
from moyklass import MOYKLASS_MAX_ID, LessonNotFound, MoyKlassClient, MoyKlassError, UserNotFound, template_fields
from phones import InvalidPhone, mask, to_e164
from providers import Delivery, DeliveryReport, Outcome, Provider, ReportSink, SendResult
from store import (
    CANCELED,
    DELIVERED,
    EXPIRED,
    FAILED,
    PHONE_POOL,
    QUEUED,
    SENDING,
    SENT,
    UNDELIVERED,
    Change,
    DatabaseUnavailable,
    ProviderState,
    Store,
)
from templates import event_template
from texts import Template, measure, transliterate

log = logging.getLogger(__name__)

# Delays scale with SMS_RETRY_BASE_SECONDS (15 s by default), capped at these:
MAX_RETRY_DELAY = 3600.0
PROVIDER_PAUSE_MAX = 60.0  # bad gateway credentials stop sending this long before a new try
REPORT_FIRST_MAX = 10.0  # the first delivery report is asked for this long after sending
REPORT_MAX_DELAY = 1800.0
PAUSE_CHECK_SECONDS = 1.0  # how stale this process's view of the providers' pauses and downs may be
PROVIDER_DOWN_AFTER = 3  # failed sends in a row (not taken, no answer) that put a provider down for a while
BATCH_LOOKUP_WAIT_SECONDS = 2.0  # how long a worker may wait for MoyKlass' rate limit to look students up together
LEASE_MARGIN_SECONDS = 1.0  # a send starts only with its deadline plus this left on the lease


class Cause(enum.Enum):
    """Why an attempt did not end SENT; the sync webhook answers each with its own status code."""

    USER_NOT_FOUND = "user_not_found"
    NO_PHONE = "no_phone"
    NO_TEXT = "no_text"  # the event has no text any more
    INVALID_PHONE = "invalid_phone"
    MOYKLASS = "moyklass"
    GATEWAY = "gateway"
    EXPIRED = "expired"
    OUTSIDE_WINDOW = "outside_window"
    CANCELED = "canceled"
    HANDED_OVER = "handed_over"  # not finished within the caller's wait: back to the queue, the worker goes on
    LEASE_LOST = "lease_lost"  # another worker holds it now: nothing of this attempt is written


@dataclass(frozen=True)
class AttemptResult:
    change: Change | None  # what to write: the message's status afterwards, with what was learnt
    cause: Cause | None = None
    error: str = ""

    @property
    def status(self) -> str | None:
        return self.change.status if self.change else None

    @property
    def will_retry(self) -> bool:
        return self.status == QUEUED


@dataclass(frozen=True)
class Gateway:
    """A provider as messages are sent through it: its own rate limit, send slots and price."""

    provider: Provider
    rate: Any  # a shared rate limiter (Store.rate_limiter), or None: no limit
    slots: Any  # its shared send slots (Store.send_slots)
    price_per_part: float
    currency: str

    @property
    def name(self) -> str:
        return self.provider.name


class Dispatcher:
    def __init__(self, config: Config, store: Store, moyklass: MoyKlassClient | None, providers: list[Provider]):
        self.config = config
        self.store = store
        self.moyklass = moyklass
        self.gateways: dict[str, Gateway] = {}
        for provider in providers:
            settings = config.provider_settings[provider.name]
            rate = settings["RATE_PER_SEC"]
            self.gateways[provider.name] = Gateway(
                provider, store.rate_limiter(provider.name, rate, config.data_dir) if rate > 0 else None,
                store.send_slots(provider.name, settings["CONCURRENCY"], config.data_dir),
                settings["PRICE_PER_PART"], settings["CURRENCY"])
        # Pull providers (the android phones): their messages join a pool the phones lease from.
        phone_settings = PhoneSettings.of(config)
        self.pools = {name: PhonePool(store, phone_settings) for name, gateway in self.gateways.items()
                      if gateway.provider.pulls}
        self._states: dict[str, ProviderState] = {}
        self._states_read_at = -PAUSE_CHECK_SECONDS
        self._failing: set[str] = set()  # providers this process saw fail since their last success
        self._late_results = LateResults(store)
        self._lookups = ThreadPoolExecutor(1, thread_name_prefix="lookup")  # see users_for
        self._lookup: Future | None = None

    @property
    def max_segments(self) -> int:
        """The longest text (in SMS parts) every provider takes: what a text queued by hand is held to."""
        return min(gateway.provider.max_segments for gateway in self.gateways.values())

    @property
    def report_providers(self) -> list[str]:
        """The providers whose delivery reports the worker asks for."""
        return [name for name, gateway in self.gateways.items() if gateway.provider.supports_delivery_reports]

    def attempt_and_record(self, message: dict[str, Any], owner: str, give_up_at: float | None) -> AttemptResult:
        """One attempt, written at once (the synchronous webhook), waiting for the MoyKlass rate
        limit and a send slot only until `give_up_at` (monotonic). A result the database refuses
        now is written later in the background (LateResults): the send happened either way."""
        result = self.attempt(message, owner, give_up_at)
        if result.change is None:
            return result
        try:
            lost = self.store.apply([result.change], owner)
            if lost:
                log.warning("%s was taken over before its result was written", describe(message).capitalize())
            metrics.changes_written([result.change], lost)
        except DatabaseUnavailable as error:
            log.error("%s: its result (%s) cannot be written now (%s); writing it in the background",
                      describe(message).capitalize(), result.status, error)
            self._late_results.add(result.change, owner, message["lease_until"])
        return result

    def users_for(self, messages: list[dict[str, Any]]) -> Lookup:
        """The MoyKlass users these messages wait for, looked up together, 100 in one call, where one
        call each would spend MoyKlass' 7 requests a second on one student each. If that cannot be
        done now (MoyKlass failing, its rate limit taken, the last such lookup still running), the
        messages wait for the next one (`postpone`): looking each up on its own would spend the
        rate limit that the next lookup together needs, and a burst would go out at 7 a second."""
        user_ids = [m["user_id"] for m in messages if m["user_id"] and not (m["phone"] and m["text"] is not None)
                    and not _wants_fresh_user(m)]
        if len(user_ids) < 2 or self.moyklass is None:
            return Lookup({})
        waiting = frozenset(user_ids)
        if self._lookup and not self._lookup.done():
            return self._postponed(waiting, "the students of earlier messages are being looked up together")
        # The whole lookup is bounded, not each wait or read: the worker's loop waits for it. One
        # that takes longer goes on in the background (no other starts meanwhile) and fills the
        # user cache for the next claims.
        self._lookup = self._lookups.submit(self.moyklass.get_users, user_ids,
                                            time.monotonic() + BATCH_LOOKUP_WAIT_SECONDS)
        try:
            return Lookup(self._lookup.result(timeout=BATCH_LOOKUP_WAIT_SECONDS + 1))
        except (MoyKlassError, WouldWait, FutureTimeout) as error:
            reason = f"looking up {len(waiting)} students together failed ({type(error).__name__}: {error})"
            log.info("%s; their messages wait for the next try", reason.capitalize())
            return self._postponed(waiting, reason)

    def _postponed(self, waiting: frozenset[int], reason: str) -> Lookup:
        """The users of `waiting` this process has in its cache; the others' messages wait."""
        cached = {user_id: user for user_id in waiting if (user := self.moyklass.user_cache.get(user_id))}
        return Lookup(cached, waiting - cached.keys(), reason)

    def postpone(self, message: dict[str, Any], reason: str) -> AttemptResult:
        """Back to the queue until the next lookup together (see users_for); no attempt used."""
        return self._retry_later(message, Cause.MOYKLASS, reason, code="lookup",
                                 delay=self._jittered(BATCH_LOOKUP_WAIT_SECONDS))

    def attempt(self, message: dict[str, Any], owner: str, give_up_at: float | None = None,
                user: dict[str, Any] | None = None) -> AttemptResult:
        """Make one attempt at a message leased to `owner`; the result says what to write, the
        caller writes it. With `give_up_at`, a wait that would last past it hands the message
        back to the queue instead.

        What was resolved (phone, text, encoding) is written together with the outcome, so an
        attempt costs one write, which a worker batches with others; until then the lease alone
        says the message is being sent.
        """
        where = describe(message)
        if message["deadline"] < time.time():
            return self._finish(message, EXPIRED, Cause.EXPIRED,
                                "its deadline passed before it was sent")
        try:
            phone, text = self._resolve(message, give_up_at, user)
        except (UserNotFound, _NoPhone, _NoText, InvalidPhone) as error:
            cause = {UserNotFound: Cause.USER_NOT_FOUND, _NoPhone: Cause.NO_PHONE, _NoText: Cause.NO_TEXT,
                     InvalidPhone: Cause.INVALID_PHONE}[type(error)]
            return self._finish(message, FAILED, cause, str(error), code=type(error).__name__)
        except _SameNumber as error:
            return self._finish(message, CANCELED, Cause.CANCELED, str(error), code="same-number")
        except WouldWait as error:
            return self._hand_over(message, f"MoyKlass' rate limit: {error}")
        except MoyKlassError as error:  # unreachable, failing, or refusing our key: try again later
            log.warning("%s: %s; trying again later", where, error)
            return self._retry_later(message, Cause.MOYKLASS, str(error), code=type(error).__name__,
                                     delay=self._jittered(self.config.sms_retry_base_seconds))

        if message["window_from"]:
            opening = next_opening(time.time(), message["timezone"], (message["window_from"], message["window_to"]))
            if opening > time.time():
                return self._retry_later(message, Cause.OUTSIDE_WINDOW, "outside the client's local-time window",
                                         code="window", delay=opening - time.time())
        encoding = measure(text)
        details = {"phone": phone, "text": text, "encoding": encoding.name, "segments": encoding.segments}
        where += f" to {mask(phone)}"
        pinned = message["provider"] if message["unknown_outcomes"] else None
        if pinned and pinned not in self.gateways:
            return self._finish(message, FAILED, Cause.GATEWAY, f"not tried again: an earlier send through {pinned}"
                                f" may have gone out, and {pinned} is no longer in SMS_PROVIDERS", code="unknown",
                                **details)
        route = (pinned,) if pinned else self.config.route_for(phone)
        fitting = [name for name in route if encoding.segments <= self.gateways[name].provider.max_segments]
        if not fitting:
            longest = max(self.gateways[name].provider.max_segments for name in route)
            result = SendResult(Outcome.REJECTED, code="too-long", message=f"the text needs {encoding.segments} SMS;"
                                f" {', '.join(route)} take at most {longest}")
            return self._record(message, f"{where} via {route[0]}", result, details | {"provider": route[0]},
                                self.gateways[route[0]], sends=1)
        return self._send(message, owner, give_up_at, where, details, fitting)

    def _send(self, message: dict[str, Any], owner: str, give_up_at: float | None, where: str,
              details: dict[str, Any], route: list[str]) -> AttemptResult:
        """Send through the first provider of `route` that is neither paused nor down; if it does not
        take the message (TRANSIENT) or refuses our credentials (AUTH), at once through the next, within
        the message's attempts and deadline. A REJECTED or UNKNOWN verdict is final for this attempt:
        the other providers could only refuse it too, or send it a second time."""
        self._read_states()
        blocked: list[tuple[float, str]] = []  # (until when, why) of the providers skipped
        last: tuple[Gateway, SendResult, str] | None = None  # the latest send that failed over
        sends = 0
        for index, name in enumerate(route):
            gateway, now = self.gateways[name], time.time()
            why = self._blocked(name, now)
            if why:
                blocked.append(why)
                continue
            if last and (message["attempts"] + sends >= self.config.sms_max_attempts or now >= message["deadline"]):
                break
            via = f"{where} via {name}"
            if name in self.pools:
                return self._to_pool(message, via, details, name)
            try:
                with gateway.slots.hold(give_up_at):
                    if gateway.rate:
                        gateway.rate.wait(give_up_at)
                    refusal = self._may_not_send(message, owner)
                    if refusal:
                        return refusal
                    with metrics.timed_send(name):
                        result = gateway.provider.send(details["phone"], details["text"], self.config.sms_sender)
            except WouldWait as error:
                if last:
                    break
                return self._hand_over(message, f"no send slot of {name}: {error}", **details)
            self._learn(gateway, result)
            sends += result.outcome is not Outcome.AUTH
            others = [other for other in route[index + 1:] if not self._blocked(other, time.time())]
            if result.outcome in (Outcome.TRANSIENT, Outcome.AUTH) and others:
                log.warning("%s did not take %s: %s (code %s); trying %s at once", name, describe(message),
                            result.message, result.code, others[0])
                last = (gateway, result, via)
                continue
            return self._record(message, via, result, details | {"provider": name}, gateway, sends)
        if last:
            gateway, result, via = last
            return self._record(message, via, result, details | {"provider": gateway.name}, gateway, sends)
        until, why = min(blocked)
        return self._retry_later(message, Cause.GATEWAY, f"sending paused: {why}", code="paused",
                                 delay=until - time.time(), **details)

    def _may_not_send(self, message: dict[str, Any], owner: str) -> AttemptResult | None:
        """Why this message must not be sent now, read from its row just before the send; None if it may.

        No read is needed for a message of no mailing whose lease, as this holder took it, still
        outlives the send: only an expired lease can be taken over (its holder only ever extends
        it), and only a mailing can be cancelled. That spares most sends a read of the database.
        """
        margin = self.config.http_timeout + LEASE_MARGIN_SECONDS
        if not message["mailing_id"] and message["lease_owner"] == owner \
                and (message["lease_until"] or 0) - time.time() > margin:
            return None
        lease = self.store.lease_state(message["id"], owner)
        if not lease.ours:
            log.warning("%s was taken over by another worker before it was sent; not sent here",
                        describe(message).capitalize())
            return AttemptResult(None, Cause.LEASE_LOST, "another worker holds it now")
        if lease.canceled:
            return self._finish(message, CANCELED, Cause.CANCELED, "its mailing was cancelled before it was sent")
        if lease.seconds_left < margin:
            return self._hand_over(message, f"its lease has {lease.seconds_left:.1f} s left, less than a send may take")
        return None

    def _to_pool(self, message: dict[str, Any], via: str, details: dict[str, Any], name: str) -> AttemptResult:
        """Into the pull provider's pool, SENDING under its lease until the deadline (and the phones'
        grace): a phone leases it from there (devices.py). Not an attempt: nothing was sent."""
        hold = message["deadline"] + self.pools[name].settings.grace_seconds
        change = Change(message["id"], SENDING, dict(details, provider=name, lease_owner=PHONE_POOL, lease_until=hold,
                                                     device_lease_until=None))
        log.info("Queued %s for the phones", via)
        return AttemptResult(change, Cause.HANDED_OVER, "handed to the phones")

    def sweep_pools(self, now: float) -> None:
        """The pull providers' upkeep, once a second in the worker (PhonePool.sweep)."""
        for pool in self.pools.values():
            pool.sweep(now, self.config.sms_max_attempts)

    def _hand_over(self, message: dict[str, Any], reason: str, **details: Any) -> AttemptResult:
        """Back to the queue, due now and with no attempt used: the worker carries on."""
        change = Change(message["id"], QUEUED, dict(details, next_attempt_at=time.time()))
        return AttemptResult(change, Cause.HANDED_OVER, reason)

    def _resolve(self, message: dict[str, Any], give_up_at: float | None,
                 user: dict[str, Any] | None) -> tuple[str, str]:
        """The E.164 number and the text: given (CLI, API: checked when queued), or looked up in
        MoyKlass and rendered (webhooks)."""
        if message["phone"] and message["text"] is not None:
            return message["phone"], message["text"]
        template, no_text = (None, None) if message["text"] is not None else \
            event_template(self.config, self.store, message["event"])
        if no_text:  # its SMS_TEXT_<EVENT> was removed while it waited, or names a template that cannot serve
            raise _NoText(no_text)
        if self.moyklass is None:
            raise MoyKlassError("MoyKlass is not configured: set API_KEY")
        user = user or self.moyklass.get_user(message["user_id"], give_up_at, fresh=_wants_fresh_user(message))
        recipient = message["recipient"] or STUDENT
        phone = self._number(user, recipient)
        if recipient == PARENT and self.config.sms_recipients == "both" and user.get("phone") \
                and _same_number(user["phone"], phone, self.config.default_region):
            raise _SameNumber("the parent's number is the student's: the student's SMS reaches it")
        if template is None:
            return phone, message["text"]
        try:
            return phone, self._render(template, template_fields(user) | json.loads(message["event_fields"] or "{}"))
        except KeyError as missing:  # queued by hand (API, `send`) for an event whose webhook carries the field
            raise _NoText(f"the text of {message['event']} needs {{{missing.args[0]}}}, which only"
                          f" its webhook carries")

    def _render(self, template: Template, values: dict[str, Any]) -> str:
        """The text of one message, in GSM-7 letters when SMS_TRANSLITERATE says so."""
        text = template.render(values)
        return transliterate(text) if self.config.sms_transliterate else text

    def _number(self, user: dict[str, Any], recipient: str) -> str:
        """The E.164 number of the student, or of the parent (the students' phone attribute
        SMS_PARENT_PHONE_ATTRIBUTE): _NoPhone or InvalidPhone if there is none that can take an SMS."""
        if recipient == PARENT:
            alias = self.config.sms_parent_phone_attribute
            raw = next((a.get("value") for a in user.get("attributes") or []
                        if isinstance(a, dict) and a.get("attributeAlias") == alias), None)
            missing = f"MoyKlass user {user.get('id')} has no parent phone (attribute {alias})"
        else:
            raw, missing = user.get("phone"), f"MoyKlass user {user.get('id')} has no phone"
        if raw in (None, ""):
            raise _NoPhone(missing)
        return to_e164(str(raw), self.config.default_region)

    def expand_lesson_reminder(self, reminder: dict[str, Any], owner: str) -> None:
        """Read a reminder's lesson and queue one message per recipient of each student booked on it.

        The students are the lesson's records, less those the school marked absent with a good
        reason (`goodReason`), looked up 100 at a time; a student MoyKlass does not know, or
        without a number that takes an SMS, gets a FAILED message saying so. Messages are due at
        once and expire when the lesson starts. MoyKlass unreachable: tried again later.
        """
        event, lesson_id = reminder["event"], reminder["lesson_id"]
        where = f"Lesson reminder {reminder['id']} ({event}, lesson {lesson_id})"
        template, no_text = event_template(self.config, self.store, event)
        if template is None or self.moyklass is None:
            reason = no_text or "MoyKlass is not configured: set API_KEY"
            self.store.postpone_lesson_reminder(reminder["id"], owner, None, reason)
            log.warning("%s failed: %s", where, reason)
            return
        try:
            lesson = _ReadLesson(self.moyklass.get_lesson(lesson_id), self.config.default_timezone)
            if lesson.starts_at <= time.time():
                raise LessonNotFound(f"lesson {lesson_id} started at {lesson.fields['lesson_date']}"
                                     f" {lesson.fields['lesson_time']}: too late to remind anyone")
            users = self.moyklass.get_users(lesson.students)
        except (LessonNotFound, MalformedLesson) as error:  # asking again will not help
            self.store.postpone_lesson_reminder(reminder["id"], owner, None, str(error))
            log.warning("%s failed: %s", where, error)
            return
        except (MoyKlassError, WouldWait) as error:
            delay = self._backoff(reminder["attempts"] + 1)
            self.store.postpone_lesson_reminder(reminder["id"], owner, time.time() + delay, str(error))
            log.warning("%s: %s; trying again in %.1f s", where, error, delay)
            return
        if lesson.dropped:
            log.warning("%s: %d records of the lesson name no student id and are left out", where, lesson.dropped)
        deadline = min(reminder["deadline"], lesson.starts_at)
        messages = [message for user_id in lesson.students
                    for message in self._reminder_messages(event, lesson_id, user_id, users.get(user_id),
                                                           template, lesson.fields, deadline)]
        queued = self.store.fan_out_lesson_reminder(reminder["id"], messages)
        log.info("%s on %s %s: %d students booked, %d messages, %d new", where, lesson.fields["lesson_date"],
                 lesson.fields["lesson_time"], len(lesson.students), len(messages), queued)

    def _reminder_messages(self, event: str, lesson_id: int, user_id: int, user: dict[str, Any] | None,
                           template: Template, fields: dict[str, str], deadline: float) -> list[dict[str, Any]]:
        """One message per recipient of one student: QUEUED with its number and text, or FAILED saying why."""
        messages, numbers = [], set()
        for recipient in RECIPIENTS[self.config.sms_recipients]:
            key = hashlib.sha256(json.dumps([event, lesson_id, user_id, fields["lesson_date"], fields["lesson_time"],
                                             recipient]).encode()).hexdigest()
            message = {"event": event, "dedup_key": key, "user_id": user_id, "recipient": recipient, "phone": None,
                       "text": None, "status": QUEUED, "last_error": None, "next_attempt_at": time.time(),
                       "deadline": deadline, "event_fields": json.dumps(fields, ensure_ascii=False)}
            try:
                if user is None:
                    raise UserNotFound(f"MoyKlass has no user {user_id}")
                message["phone"] = self._number(user, recipient)
            except (UserNotFound, _NoPhone, InvalidPhone) as error:
                messages.append(message | {"status": FAILED, "last_error": str(error)})
                continue
            if message["phone"] in numbers:
                continue  # the parent's number is the student's: one SMS
            numbers.add(message["phone"])
            messages.append(message | {"text": self._render(template, template_fields(user) | fields)})
        return messages

    def _read_states(self) -> None:
        """Refresh this process's view of the providers' pauses and downs, at most once a second."""
        if time.monotonic() >= self._states_read_at + PAUSE_CHECK_SECONDS:
            self._states = self.store.provider_states()
            self._states_read_at = time.monotonic()

    def _blocked(self, name: str, now: float) -> tuple[float, str] | None:
        """(until when, why) the provider must not be sent through now; None if it may."""
        if name in self.pools:
            return self.pools[name].blocked(now)
        state = self._states.get(name)
        if state is None:
            return None
        if state.paused_until and state.paused_until > now:
            return state.paused_until, f"{name}: {state.pause_reason}"
        if state.down_until and state.down_until > now:
            return state.down_until, f"{name} is down: {state.down_reason}"
        return None

    def _learn(self, gateway: Gateway, result: SendResult) -> None:
        """What a send says of its provider: credentials or balance refused pause it for every
        process; PROVIDER_DOWN_AFTER failures in a row (not taken, no answer) put it down for a
        while; any answer ends both."""
        name, state = gateway.name, self._states.get(gateway.name)
        error = f"{result.message} (code {result.code})"
        if result.outcome is Outcome.AUTH:
            pause = min(4 * self.config.sms_retry_base_seconds, PROVIDER_PAUSE_MAX)
            self.store.pause_provider(name, time.time() + pause, error)
            self._states_read_at = -PAUSE_CHECK_SECONDS  # read it back at once
            log.error("%s refused our credentials, sender or balance: %s. Sending through it is paused; fix its"
                      " settings (%s_*). Next try in %.0f s.", name, error, name.upper(), pause)
        elif result.outcome in (Outcome.TRANSIENT, Outcome.UNKNOWN):
            self._failing.add(name)
            down_for = min(4 * self.config.sms_retry_base_seconds, PROVIDER_PAUSE_MAX)
            if self.store.record_provider_failure(name, error, PROVIDER_DOWN_AFTER, time.time() + down_for):
                self._states_read_at = -PAUSE_CHECK_SECONDS
                log.error("%s failed %d or more sends in a row (the last: %s): down for %.0f s; its messages go"
                          " through the next provider of their route", name, PROVIDER_DOWN_AFTER, error, down_for)
        else:
            if state and state.paused_until and self.store.resume_provider(name):
                log.warning("%s accepts our credentials again: sending resumed", name)
                self._states_read_at = -PAUSE_CHECK_SECONDS
            if (name in self._failing or (state and state.failures)) and self.store.record_provider_success(name):
                log.info("%s takes messages again: its run of failures is over", name)
                self._states_read_at = -PAUSE_CHECK_SECONDS
            self._failing.discard(name)

    def provider_health(self, now: float) -> dict[str, dict[str, Any]]:
        """Each provider, read afresh: `state` healthy, paused (credentials or balance refused: until
        the next try) or down (failing: until when), why, and its messages sent and FAILED in the last hour."""
        states = self.store.provider_states()
        activity = self.store.provider_activity(now - 3600)
        health = {}
        for name in self.gateways:
            state = states.get(name, ProviderState())
            if state.paused_until is not None:
                status, reason, until = "paused", state.pause_reason, state.paused_until
            elif state.down_until and state.down_until > now:
                status, reason, until = "down", state.down_reason, state.down_until
            else:
                status, reason, until = "healthy", None, None
            sent, failed = activity.get(name, (0, 0))
            health[name] = {"state": status, "reason": reason, "until": _iso(until) if until else None,
                            "sent_last_hour": sent, "failed_last_hour": failed}
        return health

    def _record(self, message: dict[str, Any], where: str, result: SendResult, details: dict[str, Any],
                gateway: Gateway, sends: int) -> AttemptResult:
        """The Change a send's verdict makes; `sends`: the attempts it used (a failover's too)."""
        if result.ok:
            now = time.time()
            reports = gateway.provider.supports_delivery_reports and self.config.sms_dlr_max_seconds > 0
            change = Change(message["id"], SENT, dict(
                details, gateway_ref=result.reference, error_code=result.code, last_error=None,
                cost=round(details["segments"] * gateway.price_per_part, 6), currency=gateway.currency or None,
                report_next_at=now + self._report_first_delay if reports else None,
                report_until=now + self.config.sms_dlr_max_seconds if reports else None), count_attempt=sends)
            log.info("Sent %s: ref %s, %d SMS %s", where, result.reference, details["segments"],
                     details["encoding"])
            return AttemptResult(change)
        error = f"{result.message} (code {result.code})"
        if result.outcome is Outcome.AUTH:
            pause = min(4 * self.config.sms_retry_base_seconds, PROVIDER_PAUSE_MAX)
            return self._retry_later(message, Cause.GATEWAY, error, code=result.code, delay=pause,
                                     count_attempt=sends, **details)
        attempts = message["attempts"] + sends
        unknown = result.outcome is Outcome.UNKNOWN
        if unknown:
            unknowns = message["unknown_outcomes"] + 1
            error = f"outcome unknown, it may have been sent ({unknowns} of at most" \
                    f" {self.config.sms_max_unknown_outcomes}): {error}"
        if result.outcome in (Outcome.TRANSIENT, Outcome.UNKNOWN):
            delay = self._backoff(attempts)
            if unknown and unknowns >= self.config.sms_max_unknown_outcomes:
                error = f"not tried again: {error}"
            elif attempts >= self.config.sms_max_attempts:
                error = f"gave up after {attempts} attempts: {error}"
            elif time.time() + delay > message["deadline"]:
                error = f"no time left before its deadline: {error}"
            else:
                log.warning("Gateway did not take %s (attempt %d of %d): %s; next try in %.1f s",
                            where, attempts, self.config.sms_max_attempts, error, delay)
                return self._retry_later(message, Cause.GATEWAY, error, code=result.code, delay=delay,
                                         count_attempt=sends, unknown_outcome=unknown, **details)
        verdict = "Gateway refused" if result.outcome is Outcome.REJECTED else "Giving up on"
        log.error("%s %s: %s", verdict, where, error)
        return self._finish(message, FAILED, Cause.GATEWAY, error, code=result.code, count_attempt=sends,
                            unknown_outcome=unknown, gateway_ref=result.reference, **details)

    def _retry_later(self, message: dict[str, Any], cause: Cause, error: str, *,
                     code: str | None, delay: float, count_attempt: int = 0, unknown_outcome: bool = False,
                     **details: Any) -> AttemptResult:
        """Back to the queue for a later attempt; past the deadline it EXPIRES instead."""
        next_at = time.time() + delay
        if next_at > message["deadline"]:
            return self._finish(message, EXPIRED, Cause.EXPIRED, f"deadline passed: {error}", code=code,
                                count_attempt=count_attempt, unknown_outcome=unknown_outcome, **details)
        change = Change(message["id"], QUEUED, dict(details, next_attempt_at=next_at, error_code=code,
                                                    last_error=error), count_attempt, unknown_outcome)
        return AttemptResult(change, cause, error)

    def _finish(self, message: dict[str, Any], status: str, cause: Cause, error: str, code: str | None = None,
                count_attempt: int = 0, unknown_outcome: bool = False, **fields: Any) -> AttemptResult:
        if status != FAILED or cause is not Cause.GATEWAY:
            log.warning("%s %s: %s", describe(message).capitalize(), status, error)
        change = Change(message["id"], status, dict(fields, error_code=code, last_error=error), count_attempt,
                        unknown_outcome)
        return AttemptResult(change, cause, error)

    def poll_report(self, message: dict[str, Any]) -> None:
        """Ask the provider that sent a SENT message how it fared; record a final answer or ask again later."""
        report = self.gateways[message["provider"]].provider.delivery_report(message["gateway_ref"])
        final = {Delivery.DELIVERED: DELIVERED, Delivery.UNDELIVERED: UNDELIVERED, Delivery.FAILED: FAILED}
        if report.state in final:
            self.store.transition(message["id"], final[report.state], report_text=report.description)
            metrics.message_status(final[report.state], message["provider"])
            log.info("Delivery report for message %d: %s (%s)", message["id"], final[report.state],
                     report.description)
            return
        now = time.time()
        delay = min(max(now - message["sent_at"], self._report_first_delay), REPORT_MAX_DELAY)
        keep_asking = report.state is Delivery.PENDING and now + delay <= (message["report_until"] or 0)
        self.store.schedule_report(message["id"], now + delay if keep_asking else None, report.description)

    @property
    def _report_first_delay(self) -> float:
        return min(self.config.sms_retry_base_seconds, REPORT_FIRST_MAX)

    def _backoff(self, attempt: int) -> float:
        """The pause after the `attempt`-th failed try: SMS_RETRY_BASE_SECONDS doubled each time,
        at most MAX_RETRY_DELAY, jittered."""
        return self._jittered(min(self.config.sms_retry_base_seconds * 2 ** (attempt - 1), MAX_RETRY_DELAY))

    @staticmethod
    def _jittered(delay: float) -> float:
        """Spread retries so that messages failed together do not come back together."""
        return delay * random.uniform(0.8, 1.2)


def pushed_report_sink(store: Store) -> ReportSink:
    """Where providers hand the delivery reports that come on their own: the final ones are kept
    and applied to their message (Store.record_pushed_report); the others say nothing new."""
    final = {Delivery.DELIVERED: DELIVERED, Delivery.UNDELIVERED: UNDELIVERED, Delivery.FAILED: FAILED}

    def record(provider: str, reference: str, report: DeliveryReport) -> None:
        if report.state in final:
            store.record_pushed_report(provider, reference, final[report.state], report.description, time.time())
            metrics.message_status(final[report.state], provider)

    return record


@dataclass(frozen=True)
class Lookup:
    """What looking up a claim's students together gave: the users found, and, if it could not be
    done now, the user ids whose messages must wait for the next one, and why."""

    users: dict[int, dict[str, Any]]
    postponed: frozenset[int] = frozenset()
    reason: str = ""


class LateResults:
    """Results of synchronous attempts that the database refused when they were made.

    A web process has no loop of its own to retry them (a worker keeps its results and writes
    them on its next turn), so a thread started on demand writes them as soon as the database
    takes them, until the message's lease runs out: past it another worker may have taken the
    message over, and the result is dropped with an ERROR (the message may then be sent again).
    """

    RETRY_SECONDS = 0.5

    def __init__(self, store: Store):
        self.store = store
        self._pending: list[tuple[Change, str, float]] = []  # (change, owner, lease end)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, change: Change, owner: str, lease_until: float) -> None:
        with self._lock:
            self._pending.append((change, owner, lease_until))
            if self._thread is None or not self._thread.is_alive():  # also a thread lost in a fork
                self._thread = threading.Thread(target=self._write_until_done, name="late-results", daemon=True)
                self._thread.start()

    def _write_until_done(self) -> None:
        while True:
            time.sleep(self.RETRY_SECONDS)
            with self._lock:
                pending, self._pending = self._pending, []
            waiting = []
            for change, owner, lease_until in pending:
                if time.time() >= lease_until:
                    log.error("Message %d: its result (%s) could not be written before its lease ran out;"
                              " it may be sent again", change.message_id, change.status)
                    continue
                try:
                    self.store.apply([change], owner)
                    log.info("Message %d: its result (%s) is written", change.message_id, change.status)
                except DatabaseUnavailable:
                    waiting.append((change, owner, lease_until))
            with self._lock:
                self._pending[:0] = waiting
                if not self._pending:
                    self._thread = None
                    return


class _NoPhone(Exception):
    pass


class _NoText(Exception):
    pass


class _SameNumber(Exception):
    pass


STUDENT, PARENT = "student", "parent"  # whom a message goes to
RECIPIENTS = {"student": (STUDENT,), "parent": (PARENT,), "both": (STUDENT, PARENT)}  # by SMS_RECIPIENTS


def _same_number(raw: Any, e164: str, region: str) -> bool:
    try:
        return to_e164(str(raw), region) == e164
    except InvalidPhone:
        return False


def _wants_fresh_user(message: dict[str, Any]) -> bool:
    """Whether the student must be read from MoyKlass, not from the user cache: a user_* event
    says the student changed (a new phone), and a message retried after its lookup failed
    (no phone, not found) waits for a fix made in MoyKlass."""
    family = family_of(message["event"])
    return (family is not None and family.name == "user") or message["error_code"] in LOOKUP_ERRORS




# The error_code of a message whose student lookup failed (an attempt records the error's class name).
LOOKUP_ERRORS = frozenset(error.__name__ for error in (UserNotFound, _NoPhone, InvalidPhone))


class MalformedLesson(ValueError):
    """MoyKlass' lesson answer lacks what a reminder needs (its date and time) or is not a lesson."""


class _ReadLesson:
    """What a reminder needs of a MoyKlass Lesson, checked: its students and its text fields.

    The students are the records' userIds (MoyKlass' ids are int32), once each, less those the
    school marked absent with a good reason (`goodReason`); a record without a usable id is
    counted in `dropped`. The lesson starts at its date and beginTime in DEFAULT_TIMEZONE, the
    school's time zone.
    """

    def __init__(self, lesson: dict[str, Any], timezone: str):
        records = lesson.get("records")
        if not isinstance(records, list):
            raise MalformedLesson("MoyKlass' lesson has no list of records")
        date, begin = lesson.get("date"), lesson.get("beginTime")
        try:
            start = datetime.fromisoformat(f"{date}T{begin}")
            if not (isinstance(date, str) and isinstance(begin, str) and len(begin) == 5):
                raise ValueError
        except ValueError:
            raise MalformedLesson(f"MoyKlass' lesson has no readable date and time ({date!r}, {begin!r})")
        self.starts_at = start.replace(tzinfo=ZoneInfo(timezone)).timestamp()
        topic = lesson.get("topic")
        self.fields = {"lesson_date": date, "lesson_time": begin, "topic": topic if isinstance(topic, str) else ""}
        usable = [r for r in records if isinstance(r, dict) and type(r.get("userId")) is int
                  and 1 <= r["userId"] <= MOYKLASS_MAX_ID]
        self.dropped = len(records) - len(usable)
        self.students = list(dict.fromkeys(r["userId"] for r in usable if not r.get("goodReason")))


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def describe(message: dict[str, Any]) -> str:
    """How log lines name a message: with its mailing and client, or its event and MoyKlass user."""
    if message.get("mailing_id"):
        return f"message {message['id']} (mailing {message['mailing_id']}, client {message['client_id']})"
    return f"message {message['id']} (event {message['event'] or '-'}, user {message['user_id'] or '-'})"
