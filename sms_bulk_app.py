"""SMSBulkApp: MoyKlass webhooks in, SMS out.

`create_app()` builds the Flask app. In production gunicorn runs `sms_bulk_app:create_app()`
(see gunicorn.conf.py) and the worker runs as `python sms_bulk_app.py worker`.
`python sms_bulk_app.py` alone serves on HOST:PORT with a worker in the same process;
`python sms_bulk_app.py --help` lists the other commands (status, send, retry-failed).
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Config, ConfigError, load_config
from delivery import Cause, Dispatcher
from locks import SharedRateLimiter
from logs import setup_logging
from moyklass import MoyKlassClient, new_session
from phones import InvalidPhone, to_e164
from providers import create_provider
from store import SENT, DatabaseUnavailable, Store
from worker import Worker, run_until_signalled, worker_id

log = logging.getLogger("sms_bulk_app")

MAX_BODY_BYTES = 64 * 1024

bp = Blueprint("sms_bulk_app", __name__)


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    dispatcher: Dispatcher


class ApiError(Exception):
    """An error answered as `{"status": "error", "message": ...}` with its HTTP status."""

    def __init__(self, status_code: int, message: str, **extra: Any):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.extra = extra


def services(app: Flask | None = None) -> Services:
    """The app's configured parts; the current app's inside a request."""
    return (app or current_app).extensions["sms_bulk_app"]


def error_response(status_code: int, message: str, **extra: Any):
    return jsonify({"status": "error", "message": message, **extra}), status_code


# Why a synchronous webhook's first attempt did not end SENT, and the status it answers with.
CAUSE_STATUS_CODES = {
    Cause.USER_NOT_FOUND: 404,
    Cause.NO_PHONE: 404,
    Cause.INVALID_PHONE: 422,
    Cause.MOYKLASS: 502,
    Cause.GATEWAY: 500,
    Cause.EXPIRED: 500,
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


@bp.app_errorhandler(ApiError)
def handle_api_error(error: ApiError):
    return error_response(error.status_code, error.message, **error.extra)


@bp.app_errorhandler(HTTPException)
def handle_http_error(error: HTTPException):
    if error.code == 413:
        return error_response(413, f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    return error_response(error.code or 500, error.description or error.name)


@bp.app_errorhandler(DatabaseUnavailable)
def handle_database_unavailable(error: DatabaseUnavailable):
    log.error("Database unavailable: %s", error)
    return error_response(503, "the database is unavailable; try again later")


@bp.app_errorhandler(Exception)
def handle_unexpected(error: Exception):
    log.exception("Unexpected error on %s %s", request.method, request.path)
    return error_response(500, "internal error; see the service log")


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
    _warn_about(app_services.config)
    return app


def new_worker(app_services: Services) -> Worker:
    config = app_services.config
    return Worker(app_services.store, app_services.dispatcher, config.sms_concurrency,
                  config.worker_lease_seconds)


# --- the command line ---

def _serve(app_services: Services, app: Flask) -> int:
    """The embedded default: the web app and a worker in one process."""
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
    count = app_services.store.retry_failed(app_services.config.sms_valid_seconds,
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
    return _send(app_services, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
