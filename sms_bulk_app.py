"""SMSBulkApp: MoyKlass webhooks in, SMS out.

`create_app()` builds the Flask app. In production gunicorn runs `sms_bulk_app:create_app()`
(see gunicorn.conf.py) and the worker runs as `python sms_bulk_app.py worker`.
`python sms_bulk_app.py` alone serves on HOST:PORT with a worker in the same process;
`python sms_bulk_app.py --help` lists the other commands (status, send, retry-failed,
import-clients, sync-moyklass, keys, users).
"""
from __future__ import annotations

import hmac
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

import api
import api_templates  # noqa: F401  (its routes join api.bp)
import callbacks
import console
import devices
import metrics
import phones_api  # its /api/v1/phones routes join api.bp
import templates
from bodies import InvalidJson, parse_json, refuse_nul_in_query
from config import Config, load_config
from database import POSTGRESQL, Backend
from delivery import RECIPIENTS, Cause, Dispatcher, pushed_report_sink
from errors import ApiError, read_body, register_error_handlers
from events import EVENT_NAME, MalformedObject, family_of
from logs import setup_logging
from moyklass import MoyKlassClient
from providers import Shared, create_provider
from store import SENT, Store
from store_postgresql import PostgresStore
from worker import Worker, worker_id

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
    Cause.OUTSIDE_WINDOW: 500,  # webhooks have no window or mailing: listed for completeness
    Cause.CANCELED: 500,
    Cause.NO_TEXT: 500,  # the webhook ignores such an event before it queues anything
}


def _check_webhook_secret(secret: str | None) -> None:
    if not secret:
        return
    given = request.args.get("secret") or request.headers.get("X-Webhook-Secret") or ""
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise ApiError(401, "missing or wrong webhook secret")


def _parse_envelope(body: bytes) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """The MoyKlass envelope `{"event", "companyId", "object": {...}}`: (payload, event, object)."""
    try:
        payload = parse_json(body)
    except InvalidJson as error:
        raise ApiError(400, str(error))
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object (the MoyKlass webhook envelope)")
    event = payload.get("event")
    if event is not None and not (isinstance(event, str) and EVENT_NAME.fullmatch(event)):
        raise ApiError(400, "event must be a plain name: 1 to 64 letters, digits, '_', '.', ':' or '-',"
                            " such as sub_lessons_left")
    obj = payload.get("object")
    if not isinstance(obj, dict):
        raise ApiError(400, "object is missing or not a JSON object")
    return payload, event, obj


@bp.post("/webhook")
def webhook():
    received = time.monotonic()
    app = services()
    config = app.config
    _check_webhook_secret(config.webhook_secret)
    body = read_body(MAX_BODY_BYTES)
    log.debug("Webhook body from %s: %s", request.remote_addr, body.decode("utf-8", "replace"))
    payload, event, obj = _parse_envelope(body)
    ignored_because = templates.ignored_because(config, app.store, event)
    if ignored_because:  # nothing to send: counted, not journaled
        app.store.count_ignored_webhook(event, time.time())
        log.info("Webhook %s ignored: %s", event, ignored_because)
        return jsonify({"status": "ignored", "reason": ignored_because})
    family = family_of(event)
    try:
        fields = family.read(obj)
    except MalformedObject as error:
        raise ApiError(400, f"{error} (in a {event} webhook)" if event else str(error))
    if app.dispatcher.moyklass is None:
        raise ApiError(503, "MoyKlass is not configured: set API_KEY")
    if family.reads_lesson:  # its students come from the lesson: the worker reads it and queues theirs
        reminder = app.store.accept_lesson_reminder(payload, event, fields["lessonId"], config.dedup_seconds,
                                                    config.sms_valid_seconds)
        log.info("Webhook %s for lesson %d: lesson reminder %d%s", event, fields["lessonId"], reminder.message_id,
                 " (a repeat: not queued again)" if reminder.duplicate else "")
        return jsonify({"status": "queued", "reminder": reminder.message_id,
                        **({"duplicate": True} if reminder.duplicate else {})}), 202
    user_id = fields.pop("userId")
    synchronous = config.webhook_mode == "sync"
    owner = f"web:{worker_id()}"
    accepted = app.store.accept_webhook(payload, event, user_id, fields, RECIPIENTS[config.sms_recipients],
                                        config.dedup_seconds, config.sms_valid_seconds,
                                        lease=(owner, config.worker_lease_seconds) if synchronous else None)
    status_code, status = (200, "success") if synchronous else (202, "queued")
    if accepted.duplicate:
        log.info("Webhook %s for user %d repeats message %d (%s); not sent again",
                 event or "-", user_id, accepted.message_id, accepted.status)
        return jsonify({"status": status, "id": accepted.message_id, "duplicate": True}), status_code
    others = {"also_queued": list(accepted.also_queued)} if accepted.also_queued else {}
    if not synchronous:
        return jsonify({"status": status, "id": accepted.message_id, **others}), status_code
    result = app.dispatcher.attempt_and_record(accepted.row, owner,
                                               give_up_at=received + config.webhook_sync_wait_seconds)
    if result.status == SENT:
        return jsonify({"status": status, "id": accepted.message_id, **others})
    if result.cause in (Cause.HANDED_OVER, Cause.LEASE_LOST):
        log.info("Webhook %s for user %d: %s; message %d is queued for the worker",
                 event or "-", user_id, result.error, accepted.message_id)
        return jsonify({"status": "queued", "id": accepted.message_id, **others}), 202
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
    providers = None
    if checks["database"] == "ok":
        providers = app.dispatcher.provider_health(time.time())
        checks["provider"] = _provider_check(providers)
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "error", "checks": checks,
            "provider": app.config.sms_provider}
    if providers is not None:
        body["providers"] = providers
        messages, sends = app.store.unknown_outcomes()
        body["details"] = {"unknown_outcome_messages": messages, "unknown_outcome_sends": sends}
        phone_settings = devices.PhoneSettings.of(app.config)
        if phone_settings is not None:
            body["phones"] = devices.health(app.store, phone_settings, time.time())
    return jsonify(body), 200 if healthy else 503


def _provider_check(providers: dict[str, dict[str, Any]]) -> str:
    """"ok" unless a provider refused our credentials or balance (a person must act), or every
    provider is down (nothing can be sent); a provider down while others send is only reported."""
    paused = [f"{name}: {state['reason']}" for name, state in providers.items() if state["state"] == "paused"]
    if paused:
        return f"error: sending paused: {'; '.join(paused)}"
    if all(state["state"] == "down" for state in providers.values()):
        return "error: every provider is down: " + "; ".join(f"{name}: {state['reason']}"
                                                             for name, state in providers.items())
    return "ok"


def _warn_about(config: Config) -> None:
    """At startup: warnings about risky settings, and which webhook events send an SMS."""
    if config.sms_provider == "console":
        log.warning("!!! SMS_PROVIDER=console: no SMS will be sent; each one is only written to the log. Name"
                    " a gateway in SMS_PROVIDERS with its settings (README, Gateways), e.g. SMS_PROVIDERS=oneclick"
                    " with ONECLICK_USERNAME and ONECLICK_PASSWORD, to send.")
    if not config.webhook_secret:
        log.warning("WEBHOOK_SECRET is not set: anyone who can reach /webhook can trigger SMS")
    if not config.api_key:
        log.warning("API_KEY is not set: webhooks will be answered 503 until it is")
    sending = ", ".join(f"{event} ({setting})" for event, setting in config.sending_events().items())
    log.info('Webhooks that send an SMS: %s, and those without an event (SMS_TEXT); any other event is'
             ' answered "ignored"', sending)


def _load_config(test_config: Mapping[str, str] | None) -> Config:
    """From `test_config` (tests), or from the environment after reading .env."""
    if test_config is not None:
        return load_config(test_config)
    load_dotenv(Path.cwd() / ".env")
    return load_config()


def open_store(database: Backend, timeout: float) -> Store:
    """The outbox on the database DATABASE_URL names (SQLite by default)."""
    if database.engine == POSTGRESQL:
        return PostgresStore(database.url, timeout)
    return Store(database.path, timeout)


def build_services(config: Config) -> Services:
    """Open everything the web app, the worker and the commands share: log, database, clients."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    setup_logging(config.log_file_path, config.log_level, config.secrets())
    store = open_store(config.database, config.database_timeout)
    store.initialize()
    moyklass = None
    if config.api_key:
        limiter = store.rate_limiter("moyklass", config.moyklass_rate_per_sec, config.data_dir)
        moyklass = MoyKlassClient(config.moyklass_api_url, config.api_key, store.token_keeper(config.token_file_path),
                                  limiter, config.http_timeouts, config.user_cache_seconds)
    shared = Shared(config.http_timeouts, config.public_url, pushed_report_sink(store))
    providers = [create_provider(name, config.provider_settings[name], shared) for name in config.sms_providers]
    return Services(config, store, Dispatcher(config, store, moyklass, providers))


class FromTrustedProxy:
    """One proxy hop (nginx), believed only when the request comes from TRUSTED_PROXIES: then the
    client's address is the last X-Forwarded-For entry and the scheme X-Forwarded-Proto. A client
    that reaches gunicorn directly cannot choose its address (and dodge the login throttling) or
    pass for HTTPS."""

    def __init__(self, wsgi_app: Any, trusted: frozenset[str]):
        self.wsgi_app = wsgi_app
        self.behind_proxy = ProxyFix(wsgi_app, x_for=1, x_proto=1)
        self.trusted = trusted

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REMOTE_ADDR") in self.trusted:
            return self.behind_proxy(environ, start_response)
        return self.wsgi_app(environ, start_response)


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from `test_config` (tests) or from the environment and .env."""
    app_services = build_services(_load_config(test_config))
    app = Flask(__name__)
    app.wsgi_app = FromTrustedProxy(app.wsgi_app, app_services.config.trusted_proxies)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["sms_bulk_app"] = app_services
    app.register_blueprint(bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(phones_api.bp)
    app.register_blueprint(api.docs_blueprint())
    app.add_url_rule("/openapi.json", view_func=api.openapi)
    register_error_handlers(app)
    app.before_request(refuse_nul_in_query)
    metrics.init_app(app, app_services.store, app_services.config.metrics_token,  # GET /metrics
                     devices.PhoneSettings.of(app_services.config))
    # The web console at /: it takes cookies (the others take tokens: no CSRF check there).
    console.init_app(app, csrf_exempt=(bp, api.bp, callbacks.bp, phones_api.bp))
    _warn_about(app_services.config)
    for problem in templates.event_problems(app_services.config, app_services.store):
        log.warning("%s: its webhooks are answered \"ignored\" until it can be used", problem)
    return app


def new_worker(app_services: Services) -> Worker:
    config = app_services.config
    return Worker(app_services.store, app_services.dispatcher, config.sms_concurrency,
                  config.worker_lease_seconds)


if __name__ == "__main__":
    import cli

    sys.exit(cli.main(sys.argv[1:]))
