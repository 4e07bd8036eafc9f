"""The daily report by e-mail: yesterday's messages (the school's day, DEFAULT_TIMEZONE), failures
by reason, cost and the mailings that finished, sent at REPORT_TIME to REPORT_EMAIL by SMTP.

Sent once a day whatever the number of workers and hosts: the worker whose scheduler first sees
the time claims the day in the database (Store.claim_daily_report, an atomic insert) under a
lease, sends, then marks it sent. A send that fails (the SMTP server down) leaves the day to be
claimed again after REPORT_RETRY_SECONDS, by any worker, until the day is over.
"""
from __future__ import annotations

import logging
import smtplib
import ssl
import threading
import time
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from zoneinfo import ZoneInfo

import reports
from config import Config, DailyReportSettings
from store import Store

log = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS = 30.0
LEASE_SECONDS = 2 * SMTP_TIMEOUT_SECONDS + 60  # a send's connect, TLS, login and data, with room to spare
BUSY_CHECK_SECONDS = 60.0  # at most this long between looks at a day another worker holds


def compose(config: Config, store: Store, day: date) -> EmailMessage:
    """The report of `day` as an e-mail to REPORT_EMAIL."""
    settings = config.daily_report
    start, end = reports.bounds(day, day, config.default_timezone)
    lines = reports.summary(store, day, day, config.default_timezone)
    currencies = {name: values["CURRENCY"] for name, values in config.provider_settings.items()}
    total = {name: sum(line[name] for line in lines) for name in reports.COUNTED}
    body = [f"SMSBulkApp: the messages of {day:%A %Y-%m-%d} ({config.default_timezone}).", "",
            f"Messages: {total['total']}; sent {total['sent']}, delivered {total['delivered']},"
            f" failed or undelivered {total['failed']}; {total['parts']} SMS parts.", "", "By provider:"]
    costs: dict[str, float] = {}
    for line in lines:
        currency = currencies.get(line["provider"] or "", "")
        if currency:
            costs[currency] = costs.get(currency, 0.0) + line["cost"]
        cost = f", cost {line['cost']:g} {currency}" if currency else ""
        body.append(f"  {line['provider'] or 'not sent':<14} {line['total']} messages, {line['sent']} sent,"
                    f" {line['delivered']} delivered, {line['failed']} failed, {line['parts']} parts{cost}")
    if not lines:
        body.append("  none")
    body += ["", "Failures by reason:"]
    reasons = store.failure_reasons(start, end)
    body += [f"  {status:<12} {code or '(no code)':<24} {count}" for status, code, count in reasons] or ["  none"]
    body += ["", "Cost: " + ("; ".join(f"{amount:g} {currency}" for currency, amount in sorted(costs.items()))
                             or "none")]
    finished = store.mailings_finished(start, end)
    body += ["", f"Mailings finished: {len(finished)}"]
    for mailing in finished:
        counts = ", ".join(f"{count} {status}" for status, count in mailing.counts.items()) or "no messages"
        body.append(f"  mailing {mailing.mailing_id}: {counts}; {mailing.segments} SMS parts")
    message = EmailMessage()
    message["Subject"] = f"SMSBulkApp daily report, {day.isoformat()}: {total['total']} messages," \
                         f" {total['failed']} failed"
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(settings.recipients)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid("sms-bulk-app-report")
    message.set_content("\n".join(body) + "\n")
    return message


def send(settings: DailyReportSettings, message: EmailMessage) -> None:
    """Hand `message` to the SMTP server (smtplib.SMTPException or OSError if it cannot be)."""
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_SECONDS) as smtp:
        if settings.smtp_starttls:
            context = ssl.create_default_context()
            if settings.smtp_ca_file:
                context.load_verify_locations(cafile=str(settings.smtp_ca_file))
            smtp.starttls(context=context)
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password or "")
        smtp.send_message(message)


def report_day(now: float, settings: DailyReportSettings, timezone: str) -> date | None:
    """The day whose report is due at `now`: yesterday once REPORT_TIME has passed today; None before."""
    local = datetime.fromtimestamp(now, ZoneInfo(timezone))
    if (local.hour, local.minute) < settings.time:
        return None
    return local.date() - timedelta(days=1)


class DailyReporter:
    """The worker's part (its scheduler calls `tick` every second): claims a due report, sends it in
    a thread of its own (the scheduler does not wait for SMTP), records the outcome."""

    def __init__(self, config: Config, store: Store, owner: str):
        self.config = config
        self.store = store
        self.owner = owner
        self._done: date | None = None  # the latest day known sent
        self._next_look = 0.0  # monotonic: a day someone else holds is not asked about before this
        self._sending: threading.Thread | None = None

    def tick(self, now: float) -> None:
        settings = self.config.daily_report
        if settings is None or time.monotonic() < self._next_look or \
                (self._sending is not None and self._sending.is_alive()):
            return
        day = report_day(now, settings, self.config.default_timezone)
        if day is None or day == self._done:
            return
        claim = self.store.claim_daily_report(day.isoformat(), self.owner, now, now + LEASE_SECONDS)
        if claim.sent:
            self._done = day
        elif not claim.claimed:
            self._next_look = time.monotonic() + min(max((claim.lease_until or now) - now, 0.0), BUSY_CHECK_SECONDS)
        else:
            self._sending = threading.Thread(target=self._send, args=(day,), name="daily-report", daemon=True)
            self._sending.start()

    def _send(self, day: date) -> None:
        settings = self.config.daily_report
        try:
            send(settings, compose(self.config, self.store, day))
        except Exception as error:  # SMTP down or refusing, the database gone: tried again later
            retry_at = time.time() + settings.retry_seconds
            log.error("Daily report of %s not sent to %s: %s; trying again in %.0f s", day, ", ".join(
                settings.recipients), error, settings.retry_seconds)
            try:
                self.store.daily_report_failed(day.isoformat(), self.owner, retry_at, str(error))
            except Exception:  # the lease runs out instead, and the day is claimed again
                log.exception("Daily report of %s: its failure could not be recorded", day)
            return
        self.store.daily_report_sent(day.isoformat(), self.owner, time.time())
        self._done = day
        log.info("Daily report of %s sent to %s", day, ", ".join(settings.recipients))
