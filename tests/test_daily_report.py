"""The daily report by e-mail, through a real SMTP server on loopback (aiosmtpd): sent once with two
workers running, with yesterday's numbers; retried when the SMTP server was down; over STARTTLS
with a login, from the command line."""
from __future__ import annotations

import email
import email.policy
import shutil
import ssl
import subprocess
import time
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import free_port, run_command, running_worker, settings_store, wait_until

TIMEZONE = "Europe/Belgrade"


class Inbox:
    """An SMTP server's handler: every message it accepted."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


def smtp_server(port: int, **options) -> tuple[Controller, Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    return controller, inbox


def report_settings(settings: dict[str, str], port: int) -> dict[str, str]:
    return settings | {"DEFAULT_TIMEZONE": TIMEZONE, "REPORT_TIME": "00:00", "REPORT_EMAIL": "office@school.example",
                       "SMTP_FROM": "sms@school.example", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
                       "SMS_PROVIDERS": "oneclick", "ONECLICK_PRICE_PER_PART": "2.5", "ONECLICK_CURRENCY": "RSD"}


def yesterday_at(hour: int) -> float:
    day = datetime.now(ZoneInfo(TIMEZONE)).date() - timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(TIMEZONE)).timestamp()


def add_message(store, created_at: float, **columns) -> int:
    """A message created at `created_at`, finished as `columns` say (no worker will claim it)."""
    message_id = store.enqueue("api", 3600, phone="+381641234567", text="Sutra nema nastave.")
    columns |= {"created_at": created_at}
    with store.transaction() as db:
        db.execute(f"UPDATE messages SET {', '.join(f'{name} = ?' for name in columns)} WHERE id = ?",
                   (*columns.values(), message_id))
    return message_id


def yesterdays_messages(store) -> None:
    """Yesterday: 3 delivered through oneclick (2 parts each, 5 RSD each), 2 FAILED (no phone, the
    gateway's code 14), 1 EXPIRED; a mailing finished with one of them. The day before, one more."""
    with store.transaction() as db:
        db.execute("INSERT INTO mailings (id, created_at, updated_at, start_at, end_at, text, filter, state)"
                   " VALUES (7, ?, ?, ?, ?, 'Zdravo', '{\"all\": true}', 'finished')",
                   (yesterday_at(8), yesterday_at(15), yesterday_at(8), yesterday_at(20)))
    sent = {"provider": "oneclick", "segments": 2, "cost": 5.0, "currency": "RSD"}
    for hour in (9, 10):
        add_message(store, yesterday_at(hour), status="DELIVERED", sent_at=yesterday_at(hour) + 5, **sent)
    with store.transaction() as db:  # the mailing's message is inserted as one, for its counters
        db.execute("INSERT INTO messages (created_at, updated_at, source, status, next_attempt_at, deadline,"
                   " mailing_id, client_id, phone, text, provider, segments, cost, currency, sent_at)"
                   " VALUES (?, ?, 'mailing', 'DELIVERED', ?, ?, 7, 1, '+381641234567', 'Zdravo', 'oneclick',"
                   " 2, 5.0, 'RSD', ?)", (yesterday_at(11), yesterday_at(11), yesterday_at(11),
                                          yesterday_at(20), yesterday_at(11) + 5))
    add_message(store, yesterday_at(12), status="FAILED", error_code="_NoPhone")
    add_message(store, yesterday_at(13), status="FAILED", error_code="14", provider="oneclick")
    add_message(store, yesterday_at(14), status="EXPIRED", error_code="window")
    add_message(store, yesterday_at(9) - 86400, status="DELIVERED", sent_at=yesterday_at(9) - 86000, **sent)


def test_two_workers_send_one_report_with_yesterdays_numbers(worker_settings):
    port = free_port()
    controller, inbox = smtp_server(port)
    settings = report_settings(worker_settings, port)
    store = settings_store(settings)
    yesterdays_messages(store)
    day = (datetime.now(ZoneInfo(TIMEZONE)).date() - timedelta(days=1)).isoformat()
    try:
        with running_worker(settings), running_worker(settings):
            wait_until(lambda: inbox.messages, what="the daily report")
            time.sleep(3)  # both schedulers tick every second: a second report would come now
            row = store.daily_report(day)
    finally:
        controller.stop()

    assert len(inbox.messages) == 1
    assert inbox.recipients == [["office@school.example"]]
    assert row["sent_at"] is not None and row["attempts"] == 1
    message = inbox.messages[0]
    assert message["From"] == "sms@school.example"
    assert message["Subject"] == f"SMSBulkApp daily report, {day}: 6 messages, 2 failed"
    body = message.get_content().replace("\r\n", "\n")
    assert "Messages: 6; sent 3, delivered 3, failed or undelivered 2; 6 SMS parts." in body
    assert "  oneclick       4 messages, 3 sent, 3 delivered, 1 failed, 6 parts, cost 15 RSD" in body
    assert "  not sent       2 messages, 0 sent, 0 delivered, 1 failed, 0 parts" in body
    reasons = body.split("Failures by reason:\n")[1].split("\n\n")[0].splitlines()
    assert sorted(line.split() for line in reasons) == [["EXPIRED", "window", "1"], ["FAILED", "14", "1"],
                                                       ["FAILED", "_NoPhone", "1"]]
    assert "Cost: 15 RSD" in body
    assert "Mailings finished: 1\n  mailing 7: 1 DELIVERED; 2 SMS parts" in body
    assert "+381641234567" not in body


def test_a_report_the_smtp_server_refused_is_sent_later_once(worker_settings):
    port = free_port()  # nothing listens there yet: the SMTP server is down
    settings = report_settings(worker_settings, port) | {"REPORT_RETRY_SECONDS": "1"}
    store = settings_store(settings)
    day = (datetime.now(ZoneInfo(TIMEZONE)).date() - timedelta(days=1)).isoformat()
    with running_worker(settings):
        failed = wait_until(lambda: (row := store.daily_report(day)) and row["last_error"] and row,
                            what="a failed send")
        assert failed["sent_at"] is None
        controller, inbox = smtp_server(port)
        try:
            wait_until(lambda: inbox.messages, what="the report, retried")
            time.sleep(2.5)
        finally:
            controller.stop()
        row = store.daily_report(day)
    assert len(inbox.messages) == 1
    assert row["sent_at"] is not None and row["attempts"] >= 2 and row["last_error"] is None
    assert "Messages: 0;" in inbox.messages[0].get_content()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test's certificate")
def test_report_send_now_over_starttls_with_a_login(settings, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"smtp-secret-pass")

    port = free_port()
    controller, inbox = smtp_server(port, tls_context=context, require_starttls=True, authenticator=authenticate,
                                    auth_required=True)
    settings = report_settings(settings, port) | {
        "SMTP_STARTTLS": "1", "SMTP_CA_FILE": str(cert), "SMTP_USER": "reports", "SMTP_PASSWORD": "smtp-secret-pass"}
    try:
        done = run_command(settings, "report", "--send-now", "--day", "2026-03-10")
        refused = run_command(settings | {"SMTP_STARTTLS": "0"}, "report", "--send-now", "--day", "2026-03-10")
    finally:
        controller.stop()
    assert done.returncode == 0, done.stderr
    assert "Subject: SMSBulkApp daily report, 2026-03-10: 0 messages, 0 failed" in done.stdout
    assert len(inbox.messages) == 1 and logins == [(b"reports", b"smtp-secret-pass")]
    assert inbox.messages[0]["Subject"] == "SMSBulkApp daily report, 2026-03-10: 0 messages, 0 failed"
    assert refused.returncode == 1 and "report: not sent:" in refused.stderr  # the server wants STARTTLS first
    log_file = Path(settings["DATA_DIR"]) / "sms_bulk_app.log"
    log = log_file.read_text() if log_file.exists() else ""
    assert "smtp-secret-pass" not in done.stdout + done.stderr + refused.stderr + log
