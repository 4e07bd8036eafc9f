"""SMSBulkApp: MoyKlass webhooks in, SMS out.

`create_app()` builds the Flask app. In production gunicorn runs `sms_bulk_app:create_app()`
(see gunicorn.conf.py) and the worker runs as `python sms_bulk_app.py worker`.
`python sms_bulk_app.py` alone serves on HOST:PORT with a worker in the same process;
`python sms_bulk_app.py --help` lists the other commands (status, send, retry-failed,
import-clients, sync-moyklass, keys).
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

import api
import api_keys
import clients
from config import Config, ConfigError, load_config
from delivery import Cause, Dispatcher
from errors import ApiError, register_error_handlers
from locks import SharedRateLimiter
from logs import setup_logging
from moyklass import MoyKlassClient, MoyKlassError, new_session
from phones import InvalidPhone, to_e164
from providers import create_provider
from store import SENT, DatabaseUnavailable, Store
from worker import Worker, run_until_signalled, worker_id

log = logging.getLogger("sms_bulk_app")

MAX_BODY_BYTES = 64 * 1024  # webhooks and API requests; CSV imports may be larger (api.py)

bp = Blueprint("sms_bulk_app", __name__)


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    dispatcher: Dispatcher


def services(app: Flask | None = None) -> Services:
    """The app's configured parts; the current app's inside a request."""
    return (app or current_app).extensions["sms_bulk_app"]


# Why a synchronous webhook's first attempt did not end SENT, and the status it answers with.
CAUSE_STATUS_CODES = {
    Cause.USER_NOT_FOUND: 404,
    Cause.NO_PHONE: 404,
    Cause.INVALID_PHONE: 422,
    Cause.MOYKLASS: 502,
    Cause.GATEWAY: 500,
    Cause.EXPIRED: 500,
    Cause.OUTSIDE_WINDOW: 500,  # webhooks have no window: listed for completeness of the mapping
}


def _check_webhook_secret(secret: str | None) -> None:
    if not secret:
        return
    given = request.args.get("secret") or request.headers.get("X-Webhook-Secret") or ""
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise ApiError(401, "missing or wrong webhook secret")


def _parse_webhook(body: bytes) -> tuple[dict[str, Any], str | None, int]:
    """The MoyKlass envelope `{"event", "companyId", "object": {"userId", ...}}`, checked."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON")
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object (the MoyKlass webhook envelope)")
    event = payload.get("event")
    if event is not None and not isinstance(event, str):
        raise ApiError(400, "event must be a string")
    obj = payload.get("object")
    if not isinstance(obj, dict):
        raise ApiError(400, "object is missing or not a JSON object")
    user_id = obj.get("userId")
    if user_id is None:
        raise ApiError(400, "object.userId is missing")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise ApiError(400, "object.userId must be a positive integer")
    return payload, event, user_id


@bp.post("/webhook")
def webhook():
    app = services()
    config = app.config
    _check_webhook_secret(config.webhook_secret)
    body = request.get_data(cache=False)
    log.debug("Webhook body from %s: %s", request.remote_addr, body.decode("utf-8", "replace"))
    payload, event, user_id = _parse_webhook(body)
    if app.dispatcher.moyklass is None:
        raise ApiError(503, "MoyKlass is not configured: set API_KEY")
    synchronous = config.webhook_mode == "sync"
    owner = f"web:{worker_id()}"
    accepted = app.store.accept_webhook(payload, event, user_id, config.dedup_seconds,
                                        config.sms_valid_seconds,
                                        lease=(owner, config.worker_lease_seconds) if synchronous else None)
    status_code, status = (200, "success") if synchronous else (202, "queued")
    if accepted.duplicate:
        log.info("Webhook %s for user %d repeats message %d (%s); not sent again",
                 event or "-", user_id, accepted.message_id, accepted.status)
        return jsonify({"status": status, "id": accepted.message_id, "duplicate": True}), status_code
    if not synchronous:
        return jsonify({"status": status, "id": accepted.message_id}), status_code
    result = app.dispatcher.attempt_and_record(app.store.message(accepted.message_id), owner)
    if result.status == SENT:
        return jsonify({"status": status, "id": accepted.message_id})
    message = result.error
    if result.will_retry:
        message += f"; message {accepted.message_id} stays queued and will be retried"
    raise ApiError(CAUSE_STATUS_CODES[result.cause], message, id=accepted.message_id)


@bp.get("/health")
def health():
    app = services()
    checks: dict[str, str] = {}
    try:
        app.store.check()
        checks["database"] = "ok"
    except Exception as error:  # any failure here is what /health exists to report
        checks["database"] = f"error: {error}"
    data_dir = app.config.data_dir
    writable = os.access(data_dir, os.W_OK | os.X_OK)
    checks["data_dir"] = "ok" if writable else f"error: {data_dir} is not writable"
    if checks["database"] == "ok":
        pause = app.store.provider_pause(app.dispatcher.provider.name)
        checks["provider"] = f"error: sending paused: {pause.reason}" if pause else "ok"
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "error", "checks": checks,
            "provider": app.config.sms_provider}
    return jsonify(body), 200 if healthy else 503


def _warn_about(config: Config) -> None:
    if config.sms_provider == "console":
        log.warning("!!! SMS_PROVIDER=console: no SMS will be sent; each one is only written to "
                    "the log. Set SMS_PROVIDER=oneclick with SMS_USERNAME and SMS_PASSWORD to send.")
    if not config.webhook_secret:
        log.warning("WEBHOOK_SECRET is not set: anyone who can reach /webhook can trigger SMS")
    if not config.api_key:
        log.warning("API_KEY is not set: webhooks will be answered 503 until it is")


def _load_config(test_config: Mapping[str, str] | None) -> Config:
    """From `test_config` (tests), or from the environment after reading .env."""
    if test_config is not None:
        return load_config(test_config)
    load_dotenv(Path.cwd() / ".env")
    return load_config()


def build_services(config: Config) -> Services:
    """Open everything the web app, the worker and the commands share: log, database, clients."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    setup_logging(config.log_file_path, config.log_level, config.secrets())
    store = Store(config.database_path, config.database_timeout)
    store.initialize()
    moyklass = None
    if config.api_key:
        limiter = SharedRateLimiter(config.data_dir / "moyklass.rate", config.moyklass_rate_per_sec)
        moyklass = MoyKlassClient(config.moyklass_api_url, config.api_key, config.token_file_path,
                                  limiter, config.http_timeouts, new_session([config.moyklass_api_url]))
    return Services(config, store, Dispatcher(config, store, moyklass, create_provider(config)))


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from `test_config` (tests) or from the environment and .env."""
    app_services = build_services(_load_config(test_config))
    app = Flask(__name__)
    # One trusted proxy hop (nginx): the client address is the last X-Forwarded-For entry.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["sms_bulk_app"] = app_services
    app.register_blueprint(bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.docs_blueprint())
    app.add_url_rule("/openapi.json", view_func=api.openapi)
    register_error_handlers(app)
    _warn_about(app_services.config)
    return app


def new_worker(app_services: Services) -> Worker:
    config = app_services.config
    return Worker(app_services.store, app_services.dispatcher, config.sms_concurrency,
                  config.worker_lease_seconds)


# --- the command line ---

def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(app_services: Services, app: Flask) -> int:
    """The embedded default: the web app and a worker in one process.

    SIGTERM and SIGINT stop both cleanly, even where SIGINT came in ignored (a background job).
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    stop = threading.Event()
    worker = threading.Thread(target=new_worker(app_services).run, args=(stop,), name="worker")
    worker.start()
    try:
        app.run(host=app_services.config.host, port=app_services.config.port, threaded=True)
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
    pause = store.provider_pause(app_services.dispatcher.provider.name)
    if pause:
        print(f"sending through {pause.provider} is paused: {pause.reason}")
    return 0


def _retry_failed(app_services: Services, since: datetime | None) -> int:
    count = app_services.store.retry_failed(time.time() + app_services.config.sms_valid_seconds,
                                            since.timestamp() if since else None)
    print(f"{count} FAILED / UNDELIVERED messages queued again")
    return 0


def _send(app_services: Services, args: argparse.Namespace) -> int:
    config, store = app_services.config, app_services.store
    if args.phone:
        try:
            phone = to_e164(args.phone, config.default_region)
        except InvalidPhone as error:
            print(f"send: {error}", file=sys.stderr)
            return 1
        message_id = store.enqueue("cli", config.sms_valid_seconds, phone=phone, text=args.text)
    else:
        if app_services.dispatcher.moyklass is None:
            print("send: --user-id needs MoyKlass: set API_KEY", file=sys.stderr)
            return 1
        message_id = store.enqueue("cli", config.sms_valid_seconds, user_id=args.user_id,
                                   text=args.text, event=args.event)
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
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        print(f"import-clients: cannot read {path}: {error}", file=sys.stderr)
        return 1
    config = app_services.config
    progress = Progress("importing", max(text.count("\n") - 1, 1))
    report = clients.import_csv(app_services.store, text, config.default_timezone, config.default_region, progress)
    progress.close()
    print(f"{report['created']} created, {report['updated']} updated, {len(report['rejected'])} rejected")
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
    print(f"{outcomes.pop('created', 0)} created, {outcomes.pop('updated', 0)} updated"
          + "".join(f", {count} skipped: {reason}" for reason, count in outcomes.most_common()))
    return 0


def _keys(app_services: Services, args: argparse.Namespace) -> int:
    store = app_services.store
    if args.keys_command == "create":
        key_id, key = api_keys.create(store, args.name, args.scopes, args.daily_quota)
        print(f"key {key_id} ({args.name}; {' '.join(args.scopes)}): {key}")
        print("Store it now: only its SHA-256 is kept, it cannot be shown again.", file=sys.stderr)
        return 0
    if args.keys_command == "revoke":
        if not api_keys.revoke(store, args.id):
            print(f"keys revoke: no active key {args.id}", file=sys.stderr)
            return 1
        print(f"key {args.id} revoked")
        return 0
    for key in api_keys.list_all(store):
        state = "revoked" if key["revoked_at"] else "active"
        quota = key["daily_quota"] if key["daily_quota"] is not None else "no limit"
        print(f"{key['id']:>4}  {key['name']:<24} {key['scopes']:<45} quota {quota}  {state}")
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
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sms_bulk_app.py", description="SMSBulkApp: MoyKlass webhooks to SMS, through an outbox.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="the web service with a worker in the same process (the default)")
    commands.add_parser("worker", help="send queued messages until SIGTERM")
    commands.add_parser("status", help="messages by status, and the oldest waiting")
    retry = commands.add_parser("retry-failed", help="queue FAILED and UNDELIVERED messages again")
    retry.add_argument("--since", type=_since, help="only messages created since this date or time")
    send = commands.add_parser("send", help="queue one SMS: to a phone with a text, or to a MoyKlass user")
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--phone", help="any common form: 064 123 4567, +381641234567, ...")
    target.add_argument("--user-id", type=_positive, help="a MoyKlass user id: its phone is looked up")
    send.add_argument("--text", help="the text (required with --phone; with --user-id the event's text)")
    send.add_argument("--event", help="with --user-id: whose SMS_TEXT_<EVENT> to use")
    importer = commands.add_parser("import-clients", help="upsert clients from a CSV file (header row, phone column)")
    importer.add_argument("file", type=Path)
    sync = commands.add_parser("sync-moyklass", help="upsert every MoyKlass student as a client")
    sync.add_argument("--client-state-id", type=_positive, action="append", dest="client_state_ids",
                      help="only students in this state (may be repeated)")
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
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "send" and args.phone and not args.text:
        parser.error("send --phone needs --text")
    try:
        config = _load_config(None)
        if args.command in (None, "serve"):
            app = create_app()
            return _serve(services(app), app)
        app_services = build_services(config)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    except (OSError, DatabaseUnavailable) as error:
        print(f"SMSBulkApp cannot start: {error}", file=sys.stderr)
        return 1
    if args.command == "worker":
        run_until_signalled(new_worker(app_services))
        return 0
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
    return _send(app_services, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
