"""The worker: claims due messages from the outbox, sends them, retries, polls delivery reports.

Run as its own process (`python sms_bulk_app.py worker`, unit sms_bulk_app-worker.service),
as many as you like on one database, or inside `python sms_bulk_app.py` for a one-command setup.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import mailings
import metrics
from daily_report import DailyReporter
from delivery import AttemptResult, Dispatcher, Lookup
from store import EXPIRED, Change, DatabaseUnavailable, Store

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.2  # how often an idle worker looks for due messages
SCHEDULE_SECONDS = 1.0  # how often mailings are checked for their start, and deadlines for expiry
CLAIM_AHEAD = 8  # messages leased per sender thread: enough to keep them busy, and to look up ~100 students at once
SHUTDOWN_GRACE_SECONDS = 8.0  # in-flight sends get this long after SIGTERM (the unit allows 10)
REPORT_BATCH = 50
REMINDER_BATCH = 2  # lesson reminders expanded at once: each reads a lesson and up to 100 students a call
LOOP_RETRY_SECONDS = 1.0  # the pause after a failed turn of the loop (database unavailable, a bug)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, store: Store, dispatcher: Dispatcher, concurrency: int, lease_seconds: float):
        self.store = store
        self.dispatcher = dispatcher
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.owner = worker_id()
        self.daily_report = DailyReporter(dispatcher.config, store, self.owner)
        self._unwritten: list[Change] = []  # results of finished sends not yet in the database

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set; then release what has not started and let sends in flight finish.

        Sender threads talk to MoyKlass and the gateway, read a message's lease just before
        sending it, and write only a provider pause (bad credentials) or the messages of a lesson
        reminder they expanded (one transaction each). This thread claims, renews the leases of
        every message in flight, and writes the results of all sends that finished, together in
        one transaction. Nothing that may take long runs here: a claim's students are looked up
        in MoyKlass by a thread of their own (its rate limit is shared by every host), and the
        scheduler (mailings' fan-out, expiry, the daily report) has its own thread too. A result
        therefore waits at most a turn of this loop to be written, so a kill -9 sends again only
        the messages whose send was under way.
        """
        log.info("Worker %s started: %d at a time, leases of %.0f s",
                 self.owner, self.concurrency, self.lease_seconds)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="send")
        lookups = ThreadPoolExecutor(1, thread_name_prefix="lookup")  # one at a time, in claim order
        scheduler = threading.Thread(target=self._schedule_until, args=(stop,), name="schedule", daemon=True)
        scheduler.start()
        in_flight: dict[Future, int | None] = {}  # message id, or None for a report poll
        next_renewal = 0.0
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= next_renewal:
                        self.store.renew_leases(self.owner, filter(None, in_flight.values()), self.lease_seconds)
                        next_renewal = time.monotonic() + self.lease_seconds / 4
                    self._write_results()
                    room = CLAIM_AHEAD * self.concurrency - len(in_flight)
                    if room >= self.concurrency and not self._unwritten:
                        claimed = self.store.claim(self.owner, room, self.lease_seconds)
                        if claimed:
                            lookup = lookups.submit(self._look_up, claimed)
                            for message in claimed:
                                in_flight[pool.submit(self._attempt_after, lookup, message)] = message["id"]
                        for reminder in self.store.claim_lesson_reminders(self.owner, REMINDER_BATCH,
                                                                          self.lease_seconds):
                            in_flight[pool.submit(self._expand, reminder)] = None
                        for provider in self.dispatcher.report_providers:
                            if len(in_flight) >= self.concurrency:
                                break
                            for message in self.store.claim_reports(provider, REPORT_BATCH, self.lease_seconds):
                                in_flight[pool.submit(self._poll_report, message)] = None
                    if in_flight:
                        done, _ = wait(in_flight, timeout=IDLE_POLL_SECONDS, return_when=FIRST_COMPLETED)
                        self._collect(done, in_flight)
                    else:
                        stop.wait(IDLE_POLL_SECONDS)
                except DatabaseUnavailable as error:
                    # Results are kept in memory and written once the database is back.
                    log.error("Database unavailable: %s; %d results wait to be written; trying again in %.0f s",
                              error, len(self._unwritten), LOOP_RETRY_SECONDS)
                    stop.wait(LOOP_RETRY_SECONDS)
                except Exception:
                    # A bug must not stop the sending for good (in `python sms_bulk_app.py` nothing
                    # would restart this thread): log it and go on.
                    log.exception("Unexpected error in the worker loop; going on in %.0f s", LOOP_RETRY_SECONDS)
                    stop.wait(LOOP_RETRY_SECONDS)
        finally:
            self._shut_down(pool, in_flight)
            lookups.shutdown(wait=False, cancel_futures=True)
            scheduler.join(SHUTDOWN_GRACE_SECONDS)

    def _look_up(self, claimed: list[dict]) -> Lookup:
        """The claim's students, looked up together. A lookup that fails unexpectedly (a bug, the
        database) is logged once, and every message of the claim waits, as after a failed lookup."""
        try:
            return self.dispatcher.users_for(claimed)
        except Exception as error:
            log.exception("Unexpected error looking up the students of a claim")
            return Lookup({}, frozenset(message["user_id"] for message in claimed),
                          f"looking up its student failed ({type(error).__name__})")

    def _attempt_after(self, lookup: Future, message: dict) -> AttemptResult:
        """Send `message` once its claim's students are looked up (or postpone it, as the lookup says)."""
        found = lookup.result()
        if message["user_id"] in found.postponed:
            return self.dispatcher.postpone(message, found.reason)
        return self.dispatcher.attempt(message, self.owner, None, found.users.get(message["user_id"]))

    def _schedule_until(self, stop: threading.Event) -> None:
        """Run the scheduler every SCHEDULE_SECONDS until `stop`; a failed turn is logged and the next one runs."""
        while not stop.is_set():
            try:
                self._schedule(time.time())
            except DatabaseUnavailable as error:
                log.error("Database unavailable for the scheduler: %s; trying again in %.0f s", error,
                          SCHEDULE_SECONDS)
            except Exception:
                log.exception("Unexpected error in the scheduler; going on in %.0f s", SCHEDULE_SECONDS)
            stop.wait(SCHEDULE_SECONDS)

    def _schedule(self, now: float) -> None:
        """Start the mailings whose time has come; expire what waited past its deadline; apply the
        delivery reports gateways pushed before their message's send was written."""
        for mailing_id, queued in mailings.start_due(self.store, now):
            log.info("Mailing %d started: %d messages queued", mailing_id, queued)
        expired = self.store.expire_overdue(now)
        metrics.message_status(EXPIRED, None, expired)
        if expired:
            log.info("%d messages expired unsent: their deadline passed", expired)
        mailings.finish_done(self.store, now)
        self.store.apply_pushed_reports(now, self.dispatcher.config.sms_dlr_max_seconds)
        self.dispatcher.sweep_pools(now)
        self.daily_report.tick(now)

    def _collect(self, done: set[Future], in_flight: dict[Future, int | None]) -> None:
        """Take the results of finished sends and write them, all in one transaction."""
        for future in done:
            message_id = in_flight.pop(future)
            if message_id is None:
                continue
            try:
                change = future.result().change
                if change is not None:
                    self._unwritten.append(change)
            except Exception:
                # The lease expires and the message is tried again; the error must not stop the worker.
                log.exception("Unexpected error on message %d", message_id)
        self._write_results()

    def _write_results(self) -> None:
        if not self._unwritten:
            return
        lost = self.store.apply(self._unwritten, self.owner)
        for message_id in lost:
            log.warning("Message %d was taken over by another worker before its result was written", message_id)
        metrics.changes_written(self._unwritten, lost)
        self._unwritten = []

    def _shut_down(self, pool: ThreadPoolExecutor, in_flight: dict[Future, int | None]) -> None:
        not_started = [message_id for future, message_id in in_flight.items()
                       if future.cancel() and message_id is not None]
        running = {future for future in in_flight if not future.cancelled()}
        finished, unfinished = wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
        released = 0
        try:
            released = self.store.release(self.owner, not_started)
            self._collect(finished, in_flight)
        except DatabaseUnavailable as error:
            log.error("Database unavailable at shutdown: %s; %d results are not written, so those messages"
                      " will be sent again once their leases expire", error, len(self._unwritten))
        pool.shutdown(wait=False, cancel_futures=True)
        log.info("Worker %s stopped: %d messages released, %d sends finished, %d still in flight"
                 " (their leases expire and another worker takes them over)",
                 self.owner, released, len(finished), len(unfinished))

    def _expand(self, reminder: dict) -> None:
        try:
            self.dispatcher.expand_lesson_reminder(reminder, self.owner)
        except Exception:  # its lease expires and it is expanded again: idempotent
            log.exception("Unexpected error expanding lesson reminder %d", reminder["id"])

    def _poll_report(self, message: dict) -> None:
        try:
            self.dispatcher.poll_report(message)
        except Exception:
            log.exception("Unexpected error polling the report of message %d", message["id"])


def run_until_signalled(worker: Worker) -> None:
    """Run the worker in this thread until SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker.run(stop)
