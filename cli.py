"""The command line: `python sms_bulk_app.py [COMMAND]`.

`main(argv)` returns the exit status, so tests call it in-process; sms_bulk_app.py calls it
from its `__main__` block. Exit status: 0 done, 1 a refused input or a start-up failure,
2 a usage or settings error.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import smtplib
import socket
import sys
import threading
import time
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server, select_address_family

import api_keys
import audit
import clients
import daily_report
import devices
import metrics
import phones_events
import templates
from config import ConfigError
from console import accounts
from database import POSTGRESQL, BadDatabaseUrl, parse_database_url
from events import MOYKLASS_EVENTS
from logs import ACCESS_LOGGER, setup_access_log
from models import whole_number
from moyklass import MoyKlassError
from phones import InvalidPhone, to_e164
from sms_bulk_app import Services, _load_config, build_services, create_app, new_worker, services
from store import MAX_ID, CostLine, DatabaseUnavailable
from store_postgresql import PostgresStore
from texts import too_many_parts
from worker import run_until_signalled

CSV_COLUMN_MEANINGS = {
    "phone": "required; any common form (064 123 4567, +381641234567); a known phone updates its client",
    "name": "the client's name, for {name} and {first_name} in mailing texts",
    "tags": "separated by ; (robotika;vip), for mailing filters",
    "timezone": "IANA name such as Europe/Belgrade; DEFAULT_TIMEZONE when empty",
    "moyklass_user_id": "the client's MoyKlass user id, if any",
}

log = logging.getLogger("sms_bulk_app")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _AccessLogRequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler, its request lines sent to the access log instead of the app log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logging.getLogger(ACCESS_LOGGER).info('%s - - [%s] "%s" %s %s', self.address_string(),
                                              self.log_date_time_string(), self.requestline, code, size)


def _serve(app_services: Services, app: Flask) -> int:
    """The embedded default: the web app and a worker in one process.

    The port is taken before the worker starts, so a second copy fails without claiming anything.
    SIGTERM and SIGINT stop both cleanly, even where SIGINT came in ignored (a background job).
    """
    host, port = app_services.config.host, app_services.config.port
    try:
        listener = socket.create_server((host, port), family=select_address_family(host, port))
    except OSError as error:
        print(f"SMSBulkApp cannot start: cannot listen on {host}:{port}: {os.strerror(error.errno)}", file=sys.stderr)
        return 1
    with listener:  # the server works on its own duplicate of the socket
        server = make_server(host, port, app, threaded=True, request_handler=_AccessLogRequestHandler,
                             fd=listener.fileno())
    setup_access_log(app_services.config.access_log_path)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    stop = threading.Event()
    worker = threading.Thread(target=new_worker(app_services).run, args=(stop,), name="worker")
    worker.start()
    banner = f"SMSBulkApp serving on http://{host}:{port} (web app and worker; Ctrl+C stops both)"
    log.info("%s", banner)
    print(banner, file=sys.stderr, flush=True)
    try:
        server.serve_forever()  # returns on KeyboardInterrupt, the socket closed
    finally:
        stop.set()
        worker.join()
    return 0


def _status(app_services: Services) -> int:
    store = app_services.store
    for status, count in store.counts().items():
        print(f"{status:<12} {count}")
    oldest = store.oldest_queued_at()
    print(f"oldest waiting: {f'{time.time() - oldest:.0f} s' if oldest else 'none'}")
    reminders = store.lesson_reminder_counts()
    print("lesson reminders: " + ", ".join(f"{count} {state}" for state, count in reminders.items()))
    messages, sends = store.unknown_outcomes()
    print(f"outcome unknown: {sends} sends of {messages} messages (timed out after reaching the gateway)")
    now = time.time()
    print("providers (sent and FAILED in the last hour):")
    for name, health in app_services.dispatcher.provider_health(now).items():
        why = f": {health['reason']} (until {health['until']})" if health["reason"] else ""
        print(f"  {name:<14} {health['state']}{why}; {health['sent_last_hour']} sent,"
              f" {health['failed_last_hour']} failed")
    _print_costs("cost by day (UTC), the last 7 days:", store.costs_by_day(now - 7 * 86400), "{}")
    _print_costs("cost by mailing:", store.mailing_costs(), "mailing {}")
    ignored = store.ignored_webhooks()
    print("ignored webhooks (no text for their event, or no such MoyKlass event):" if ignored
          else "ignored webhooks: none")
    for event, count in ignored.items():
        print(f"  {event:<22} {count}")
    _print_phones(app_services)
    return 0


def _print_phones(app_services: Services) -> None:
    """The phones (the android provider), one line each: `status` and `phones list`."""
    settings = devices.PhoneSettings.of(app_services.config)
    if settings is None:
        return
    phones = devices.health(app_services.store, settings, time.time())
    print("phones (android):" if phones else "phones (android): none registered")
    for phone in phones:
        stream = "events open" if phone["events_connected"] else "events closed"
        print(f"  {phone['id']:>4}  {phone['name']:<24} {phone['state']:<9} seen {phone['last_seen']}, {stream},"
              f" app {phone['app_version'] or '?'}; today {phone['sent_today']} sent, {phone['failed_today']} failed,"
              f" {phone['handed_today']} handed")


def _phones(app_services: Services, args: argparse.Namespace) -> int:
    """The phones: list them, disable one (it is handed nothing more), revoke its token (it registers again)."""
    if devices.PhoneSettings.of(app_services.config) is None:
        print("phones: android is not in SMS_PROVIDERS", file=sys.stderr)
        return 1
    store = app_services.store
    if args.phones_command == "list":
        _print_phones(app_services)
        return 0
    done = store.disable_device(args.id, time.time()) if args.phones_command == "disable" \
        else store.revoke_device_token(args.id)
    if not done:
        print(f"phones {args.phones_command}: no phone {args.id}, or it is {args.phones_command}d already",
              file=sys.stderr)
        return 1
    audit.record(store, f"phone.{args.phones_command}", "phone", args.id)
    print(f"phone {args.id} {args.phones_command}d")
    return 0


def _phones_events(app_services: Services) -> int:
    settings = devices.PhoneSettings.of(app_services.config)
    if settings is None:
        print("phones-events: android is not in SMS_PROVIDERS", file=sys.stderr)
        return 1
    asyncio.run(phones_events.serve(app_services.store, settings))
    return 0


def _report(app_services: Services, day: date | None, send_now: bool) -> int:
    """Print a day's report; with `send_now`, e-mail it too, aside from the worker's daily one."""
    config = app_services.config
    if config.daily_report is None:
        print("report: set REPORT_EMAIL (and the SMTP_* settings) first", file=sys.stderr)
        return 2
    day = day or datetime.now(ZoneInfo(config.default_timezone)).date() - timedelta(days=1)
    message = daily_report.compose(config, app_services.store, day)
    print(f"Subject: {message['Subject']}\nTo: {message['To']}\n\n{message.get_content()}", end="")
    if not send_now:
        return 0
    try:
        daily_report.send(config.daily_report, message)
    except (OSError, smtplib.SMTPException) as error:
        print(f"report: not sent: {error}", file=sys.stderr)
        return 1
    print(f"sent to {message['To']}", file=sys.stderr)
    return 0


def _print_costs(title: str, lines: list[CostLine], group: str) -> None:
    """What was sent, a line per group (a day, a mailing) and provider: messages, SMS parts, cost."""
    print(title if lines else f"{title} nothing sent")
    for line in lines:
        cost = f", {line.cost:g} {line.currency}" if line.currency else ""
        print(f"  {group.format(line.group):<12} {line.provider:<14} {line.messages} messages,"
              f" {line.parts} parts{cost}")


def _retry_failed(app_services: Services, since: datetime | None) -> int:
    count = app_services.store.retry_failed(time.time() + app_services.config.sms_valid_seconds,
                                            since.timestamp() if since else None)
    audit.record(app_services.store, "message.resend", "message", None, f"{count} queued again")
    print(f"{count} FAILED / UNDELIVERED messages queued again")
    return 0


def _send(app_services: Services, args: argparse.Namespace) -> int:
    config, store = app_services.config, app_services.store
    too_long = args.text and too_many_parts(args.text, app_services.dispatcher.max_segments)
    if too_long:
        print(f"send: {too_long}", file=sys.stderr)
        return 1
    if args.phone:
        try:
            phone = to_e164(args.phone, config.default_region)
        except InvalidPhone as error:
            # The operator's own input, on their own terminal: shown as typed, not masked.
            print(f"send: {args.phone!r} {error.reason}", file=sys.stderr)
            return 1
        message_id = store.enqueue("cli", config.sms_valid_seconds, phone=phone, text=args.text)
    else:
        if app_services.dispatcher.moyklass is None:
            print("send: --user-id needs MoyKlass: set API_KEY", file=sys.stderr)
            return 1
        refused_because = None if args.text else config.cannot_queue_by_hand(args.event)
        if refused_because:
            print(f"send: {refused_because}", file=sys.stderr)
            return 1
        message_id = store.enqueue("cli", config.sms_valid_seconds, user_id=args.user_id,
                                   text=args.text, event=args.event)
    audit.record(store, "message.send", "message", message_id, f"event {args.event}" if args.event else "")
    print(f"queued as message {message_id}")
    return 0


class Progress:
    """A progress bar on stderr for long commands; a line every 10 % when stderr is not a terminal."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self._shown = label, max(total, 1), -1
        self._terminal = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        share = min(done / self.total, 1.0)
        if self._terminal:
            bar = "#" * int(share * 30)
            print(f"\r{self.label} [{bar:<30}] {done}/{self.total}", end="", file=sys.stderr, flush=True)
        elif int(share * 10) > self._shown:
            self._shown = int(share * 10)
            print(f"{self.label}: {done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._terminal:
            print(file=sys.stderr)


def _import_clients(app_services: Services, path: Path) -> int:
    try:
        raw = path.read_bytes()
    except OSError as error:
        print(f"import-clients: cannot read {path}: {error}", file=sys.stderr)
        return 1
    config = app_services.config
    progress = Progress("importing", max(raw.count(b"\n") - 1, 1))
    try:
        report = clients.import_csv(app_services.store, raw, config.default_timezone, config.default_region, progress)
    except clients.NotText as error:
        print(f"import-clients: {path}: {error}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    # Rows are refused one by one and the rest imported; a refused header (line 1) means the file
    # is no client CSV at all, and nothing was imported.
    header_refused = [rejected["reason"] for rejected in report["rejected"] if rejected["row"] == 1]
    if header_refused:
        print(f"import-clients: {path}: {header_refused[0]}", file=sys.stderr)
        return 1
    counts = f"{report['created']} created, {report['updated']} updated, {len(report['rejected'])} rejected"
    audit.record(app_services.store, "client.import", "client", None, f"{path.name}: {counts}")
    print(counts)
    print(f"  read as {report['encoding']}, delimiter {report['delimiter']!r}")
    if report["ignored_columns"]:
        print(f"  columns ignored: {', '.join(report['ignored_columns'])}")
    for rejected in report["rejected"]:
        print(f"  line {rejected['row']}: {rejected['reason']}")
    return 0


def _sync_moyklass(app_services: Services, client_state_ids: list[int] | None) -> int:
    moyklass, config = app_services.dispatcher.moyklass, app_services.config
    if moyklass is None:
        print("sync-moyklass: set API_KEY", file=sys.stderr)
        return 1
    outcomes: Counter[str] = Counter()
    progress = None
    try:
        pages = clients.moyklass_users(lambda offset, limit: moyklass.list_users(offset, limit, client_state_ids))
        for users, total in pages:
            progress = progress or Progress("syncing", total)
            for user in users:
                outcomes[clients.sync_user(app_services.store, user, config.default_timezone,
                                           config.default_region)] += 1
            progress(sum(outcomes.values()))
    except MoyKlassError as error:
        print(f"sync-moyklass: {error}", file=sys.stderr)
        return 1
    finally:
        if progress:
            progress.close()
    summary = f"{outcomes.pop('created', 0)} created, {outcomes.pop('updated', 0)} updated"
    audit.record(app_services.store, "client.import", "client", None, f"from MoyKlass: {summary}")
    print(summary + "".join(f", {count} skipped: {reason}" for reason, count in outcomes.most_common()))
    return 0


def _keys(app_services: Services, args: argparse.Namespace) -> int:
    store = app_services.store
    if args.keys_command == "create":
        key_id, key = api_keys.create(store, args.name, args.scopes, args.daily_quota)
        audit.record(store, "key.create", "key", key_id, f"{args.name}; {' '.join(args.scopes)}")
        print(f"key {key_id} ({args.name}; {' '.join(args.scopes)}): {key}")
        print("Store it now: only its SHA-256 is kept, it cannot be shown again.", file=sys.stderr)
        return 0
    if args.keys_command == "revoke":
        if not api_keys.revoke(store, args.id):
            print(f"keys revoke: no active key {args.id}", file=sys.stderr)
            return 1
        audit.record(store, "key.revoke", "key", args.id)
        print(f"key {args.id} revoked")
        return 0
    for key in api_keys.list_all(store):
        state = "revoked" if key["revoked_at"] else "active"
        quota = key["daily_quota"] if key["daily_quota"] is not None else "no limit"
        print(f"{key['id']:>4}  {key['name']:<24} {key['scopes']:<45} quota {quota}  {state}")
    return 0


def _show_one_time_password(password: str | None, which_login: str) -> None:
    if password:
        print(f"one-time password: {password}")
        print(f"Give it to the person: it is shown only now, and must be changed at the {which_login} login.",
              file=sys.stderr)


def _users(app_services: Services, args: argparse.Namespace) -> int:
    """People's accounts for the web console."""
    store = app_services.store
    try:
        password = sys.stdin.readline().rstrip("\r\n") if getattr(args, "password_stdin", False) else None
        if args.users_command == "create":
            user_id, one_time = accounts.create(store, args.email, args.role, password, time.time())
            audit.record(store, "user.create", "user", user_id, f"role {args.role}")
            print(f"user {user_id} ({accounts.normalize_email(args.email)}, {args.role}) created")
            _show_one_time_password(one_time, "first")
            return 0
        if args.users_command == "reset-password":
            user = accounts.user_of(store, args.email)
            one_time = accounts.reset_password(store, user, password)
            audit.record(store, "user.reset_password", "user", user.id)
            print(f"{user.email}: password reset; their sessions ended")
            _show_one_time_password(one_time, "next")
            return 0
        if args.users_command == "enable":
            user = accounts.user_of(store, args.email)
            if store.enable_user(user.id):
                audit.record(store, "user.enable", "user", user.id)
            print(f"{user.email} may log in")
            return 0
        if args.users_command == "set-role":
            user = accounts.user_of(store, args.email)
            if accounts.set_role(store, user, args.role):
                audit.record(store, "user.role", "user", user.id, f"role {args.role}")
            print(f"{user.email} is {args.role}")
            return 0
        if args.users_command == "disable":
            if not accounts.disable(store, args.email):
                print(f"users disable: no active account {args.email}", file=sys.stderr)
                return 1
            audit.record(store, "user.disable", "user", store.user_by_email(accounts.normalize_email(args.email)).id)
            print(f"{args.email} disabled; their sessions ended")
            return 0
    except accounts.AccountError as error:
        print(f"users {args.users_command}: {error}", file=sys.stderr)
        return 1
    for user in store.users():
        state = "disabled" if user.disabled_at else "one-time password" if user.must_change_password else "active"
        print(f"{user.id:>4}  {user.email:<40} {user.role:<9} {state}")
    return 0


def _templates(app_services: Services, args: argparse.Namespace) -> int:
    """List the templates, or approve one's latest version (the command line may approve any)."""
    store = app_services.store
    if args.templates_command == "approve":
        try:
            approved = templates.approve(store, args.id, args.version, "cli")
        except templates.NotLatest as error:
            print(f"templates approve: {error}", file=sys.stderr)
            return 1
        if approved is None:
            print(f"templates approve: no template {args.id}", file=sys.stderr)
            return 1
        audit.record(store, "template.approve", "template", approved.id, f"version {approved.approved_version}")
        print(f"template {approved.id} ({approved.name}): version {approved.approved_version} approved")
        return 0
    for template in store.templates():
        approved = f"version {template.approved_version} approved" if template.approved_version else "none approved"
        print(f"{template.id:>5}  {template.name:<24} latest version {template.version} ({approved}): {template.text}")
    return 0


def _scopes(text: str) -> list[str]:
    scopes = [scope for scope in re.split(r"[,\s]+", text) if scope]
    unknown = set(scopes) - set(api_keys.SCOPES)
    if unknown or not scopes:
        raise argparse.ArgumentTypeError(f"scopes are any of: {', '.join(api_keys.SCOPES)}")
    return scopes


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time such as 2026-11-23 or "
                                         "2026-11-23T08:00")
    return moment if moment.tzinfo else moment.astimezone()


def _positive(text: str) -> int:
    """A whole number SQLite can hold as an id or a count: 1..2^63-1."""
    number = whole_number(text)
    if number is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_ID}")
    return number


def _event(text: str) -> str:
    if text not in MOYKLASS_EVENTS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a MoyKlass event")
    return text


def _csv_columns_help() -> str:
    """What `import-clients --help` says of each column of clients.CSV_COLUMNS."""
    width = max(map(len, clients.CSV_COLUMNS))
    lines = [f"  {column:<{width}}  {CSV_COLUMN_MEANINGS[column]}" for column in clients.CSV_COLUMNS]
    return "CSV columns (a header row names them, in any order):\n" + "\n".join(lines)


def _postgresql_url(text: str) -> str:
    try:
        backend = parse_database_url(text)
    except BadDatabaseUrl as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if backend.engine != POSTGRESQL:
        raise argparse.ArgumentTypeError("--to names a PostgreSQL database: postgresql://user@host:5432/name")
    return text


def _migrate_db(app_services: Services, url: str) -> int:
    """Copy every data table, ids kept, into an empty PostgreSQL database and compare the counts.
    The copy is one consistent moment of the SQLite database: stop the service first, or what it
    writes meanwhile stays behind."""
    if isinstance(app_services.store, PostgresStore):
        print("migrate-db: DATABASE_URL names PostgreSQL already; run it with the SQLite deployment's settings",
              file=sys.stderr)
        return 1
    target = PostgresStore(url, app_services.config.database_timeout)
    try:
        target.initialize()
        copied = target.copy_from(app_services.store)
        counts = target.table_counts()
    except DatabaseUnavailable as error:
        print(f"migrate-db: {error}", file=sys.stderr)
        return 1
    for table, count in copied.items():
        print(f"{table:<18} {count:>9} copied, {counts[table]:>9} in PostgreSQL")
    if counts != copied:
        print("migrate-db: the row counts differ; do not switch DATABASE_URL", file=sys.stderr)
        return 1
    print("done: set DATABASE_URL to this database on every host and restart the service")
    return 0


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The whole command line, and `send`'s own parser for the checks argparse cannot express."""
    parser = argparse.ArgumentParser(
        prog="sms_bulk_app.py", description="SMSBulkApp: MoyKlass webhooks to SMS, through an outbox.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="the web service with a worker in the same process (the default)")
    commands.add_parser("worker", help="send queued messages until SIGTERM")
    commands.add_parser("status", help="messages by status, and the oldest waiting")
    report = commands.add_parser("report", help="print the daily report of a day (yesterday by default);"
                                 " --send-now e-mails it to REPORT_EMAIL")
    report.add_argument("--day", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="the day reported, in DEFAULT_TIMEZONE (default: yesterday)")
    report.add_argument("--send-now", action="store_true",
                        help="send it now, whether or not the worker sent it already (for trying the settings)")
    retry = commands.add_parser("retry-failed", help="queue FAILED and UNDELIVERED messages again")
    retry.add_argument("--since", type=_since, help="only messages created since this date or time")
    send = commands.add_parser("send", help="queue one SMS: to a phone with a text, or to a MoyKlass user")
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--phone", help="any common form: 064 123 4567, +381641234567, ...")
    target.add_argument("--user-id", type=_positive, help="a MoyKlass user id: its phone is looked up")
    send.add_argument("--text", help="the text (required with --phone; with --user-id the event's text)")
    send.add_argument("--event", type=_event, help="with --user-id: whose SMS_TEXT_<EVENT> to use")
    importer = commands.add_parser("import-clients", help="upsert clients from a CSV file (header row, phone column)",
                                   epilog=_csv_columns_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    importer.add_argument("file", type=Path,
                          help="the CSV file: UTF-8 (with or without BOM), cp1250 or cp1251; delimiter , ; or tab")
    sync = commands.add_parser("sync-moyklass", help="upsert every MoyKlass student as a client")
    sync.add_argument("--client-state-id", type=_positive, action="append", dest="client_state_ids",
                      help="only students in this state (may be repeated)")
    migrate = commands.add_parser("migrate-db", help="copy this SQLite database into an empty PostgreSQL one")
    migrate.add_argument("--to", required=True, type=_postgresql_url, metavar="postgresql://USER:PASSWORD@HOST/DB",
                         help="the empty PostgreSQL database the service will use (DATABASE_URL)")
    keys = commands.add_parser("keys", help="API keys for /api/v1")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", type=_scopes, required=True, help=f"comma list of: {', '.join(api_keys.SCOPES)}")
    create.add_argument("--daily-quota", type=_positive, default=api_keys.DEFAULT_DAILY_QUOTA,
                        help=f"requests per UTC day (default {api_keys.DEFAULT_DAILY_QUOTA})")
    key_commands.add_parser("list", help="every key, without the keys themselves")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id", type=_positive)
    named = commands.add_parser("templates", help="named templates: list them, approve one")
    template_commands = named.add_subparsers(dest="templates_command", metavar="ACTION", required=True)
    template_commands.add_parser("list", help="every template, its latest and approved versions")
    approve = template_commands.add_parser("approve", help="approve a template's latest version")
    approve.add_argument("id", type=_positive)
    approve.add_argument("--version", type=_positive, help="only if this is still the latest version")
    users = commands.add_parser("users", help="people's accounts for the web console")
    user_commands = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    new_user = user_commands.add_parser("create", help="create an account; prints its one-time password")
    new_user.add_argument("--email", required=True)
    new_user.add_argument("--role", required=True, choices=accounts.ROLES)
    new_user.add_argument("--password-stdin", action="store_true",
                          help="read the password from the first line of standard input (not one-time)")
    user_commands.add_parser("list", help="every account, without passwords")
    disable = user_commands.add_parser("disable", help="disable an account and end its sessions")
    disable.add_argument("email")
    user_commands.add_parser("enable", help="let a disabled account log in again").add_argument("email")
    reset = user_commands.add_parser("reset-password", help="a forgotten password: prints a one-time one and"
                                     " ends the account's sessions")
    reset.add_argument("email")
    reset.add_argument("--password-stdin", action="store_true",
                       help="read the new password from the first line of standard input (not one-time)")
    set_role = user_commands.add_parser("set-role", help="change an account's role")
    set_role.add_argument("email")
    set_role.add_argument("--role", required=True, choices=accounts.ROLES)
    phones = commands.add_parser("phones", help="the phones that send as gateways (SMS Gateway for Android)")
    phone_commands = phones.add_subparsers(dest="phones_command", metavar="ACTION", required=True)
    phone_commands.add_parser("list", help="every phone and its health")
    for action, what in (("disable", "hand it nothing more; its calls are refused (403)"),
                         ("revoke", "revoke its token: it must register again with the private token")):
        phone_commands.add_parser(action, help=what).add_argument("id", type=_positive)
    commands.add_parser("phones-events", help="serve the phones' event streams (sms_bulk_app-phones.service)")
    return parser, send


def _arguments(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; argparse's SystemExit on a usage error or --help."""
    parser, send = _parser()
    args = parser.parse_args(argv)
    if args.command == "send" and args.phone:
        if args.event:
            send.error("--event goes with --user-id, not with --phone")
        if not args.text:
            send.error("--phone needs --text")
    return args


def _run(app_services: Services, args: argparse.Namespace) -> int:
    if args.command == "worker":
        metrics.setup_worker(app_services.config.metrics_dir)
        try:
            run_until_signalled(new_worker(app_services))
        finally:
            metrics.worker_stopped()
        return 0
    if args.command == "report":
        return _report(app_services, args.day, args.send_now)
    if args.command == "status":
        return _status(app_services)
    if args.command == "retry-failed":
        return _retry_failed(app_services, args.since)
    if args.command == "import-clients":
        return _import_clients(app_services, args.file)
    if args.command == "sync-moyklass":
        return _sync_moyklass(app_services, args.client_state_ids)
    if args.command == "keys":
        return _keys(app_services, args)
    if args.command == "templates":
        return _templates(app_services, args)
    if args.command == "users":
        return _users(app_services, args)
    if args.command == "phones":
        return _phones(app_services, args)
    if args.command == "phones-events":
        return _phones_events(app_services)
    if args.command == "migrate-db":
        return _migrate_db(app_services, args.to)
    return _send(app_services, args)


def main(argv: list[str]) -> int:
    """Run one command; the exit status is returned, also for a usage error (2) or --help (0)."""
    try:
        args = _arguments(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    try:
        config = _load_config(None)
        if args.command in (None, "serve"):
            metrics.use_directory(config.metrics_dir)  # a worker process of this host shows on /metrics too
            metrics.wipe(config.metrics_dir)
            app = create_app()
            return _serve(services(app), app)
        app_services = build_services(config)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    except (OSError, DatabaseUnavailable) as error:
        print(f"SMSBulkApp cannot start: {error}", file=sys.stderr)
        return 1
    try:
        return _run(app_services, args)
    except BrokenPipeError:
        # The reader went away (`status | head`): stop quietly, as other Unix tools do. stdout
        # now points at /dev/null so that Python's own flush at exit finds no broken pipe either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

