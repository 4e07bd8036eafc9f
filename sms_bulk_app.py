"""SMSBulkApp: MoyKlass webhooks in, SMS out.

`create_app()` builds the Flask app; `python sms_bulk_app.py` serves it on HOST:PORT.
In production gunicorn runs `sms_bulk_app:create_app()` (see gunicorn.conf.py).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Config, ConfigError, load_config
from delivery import Dispatcher, NoPhone
from locks import SharedRateLimiter
from logs import setup_logging
from moyklass import MoyKlassClient, MoyKlassError, MoyKlassUnavailable, UserNotFound, new_session
from phones import InvalidPhone
from providers import create_provider
from store import DatabaseUnavailable, Store

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


# Delivery failures and the HTTP status each one answers with.
DELIVERY_ERRORS: list[tuple[type[Exception], int]] = [
    (UserNotFound, 404),
    (NoPhone, 404),
    (InvalidPhone, 422),
    (MoyKlassUnavailable, 502),
    (MoyKlassError, 502),
]


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
    _check_webhook_secret(app.config.webhook_secret)
    body = request.get_data(cache=False)
    log.debug("Webhook body: %s", body.decode("utf-8", "replace"))
    payload, event, user_id = _parse_webhook(body)
    log.info("Webhook %s for user %d from %s", event, user_id, request.remote_addr)
    if app.dispatcher.moyklass is None:
        raise ApiError(503, "MoyKlass is not configured: set API_KEY")
    accepted = app.store.accept_webhook(payload, event, user_id, app.config.dedup_seconds)
    if accepted.duplicate:
        log.info("Webhook %s for user %d is a repeat of message %d (%s); not sent again",
                 event, user_id, accepted.message_id, accepted.status)
        return jsonify({"status": "success", "id": accepted.message_id, "duplicate": True})
    try:
        result = app.dispatcher.deliver_to_user(accepted.message_id, event, user_id)
    except tuple(error for error, _ in DELIVERY_ERRORS) as error:
        status_code = next(code for kind, code in DELIVERY_ERRORS if isinstance(error, kind))
        raise ApiError(status_code, str(error), id=accepted.message_id)
    if not result.ok:
        raise ApiError(500, f"the SMS gateway did not accept the message: {result.message}"
                            f" (code {result.code})", id=accepted.message_id)
    return jsonify({"status": "success", "id": accepted.message_id})


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


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from `test_config` (tests) or from the environment and .env."""
    if test_config is None:
        load_dotenv(Path.cwd() / ".env")
        config = load_config()
    else:
        config = load_config(test_config)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    setup_logging(config.log_file_path, config.log_level, config.secrets())
    store = Store(config.database_path)
    store.initialize()
    session = new_session([config.moyklass_api_url, config.sms_api_url])
    moyklass = None
    if config.api_key:
        limiter = SharedRateLimiter(config.data_dir / "moyklass.rate", config.moyklass_rate_per_sec)
        moyklass = MoyKlassClient(config.moyklass_api_url, config.api_key, config.token_file_path,
                                  limiter, config.http_timeout, session)
    dispatcher = Dispatcher(config, store, moyklass, create_provider(config, session))

    app = Flask(__name__)
    # One trusted proxy hop (nginx): the client address is the last X-Forwarded-For entry.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["sms_bulk_app"] = Services(config, store, dispatcher)
    app.register_blueprint(bp)
    _warn_about(config)
    return app


def main(argv: list[str]) -> int:
    try:
        app = create_app()
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    except OSError as error:
        print(f"SMSBulkApp cannot start: {error}", file=sys.stderr)
        return 1
    config = services(app).config
    app.run(host=config.host, port=config.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
