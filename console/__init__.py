"""The web console for people: login, dashboard, users (issue 12).

Served at / (login at /login) by the same app as the webhook and the API, reading the same store
through the same functions. Its pages use a signed session cookie and CSRF tokens (Flask-WTF);
the webhook, the callbacks and the API (bearer keys) take no cookies and stay exempt. Its errors
are HTML pages; those of every other route stay JSON (errors.py).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, abort, current_app, g, render_template, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_babel import Babel, get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.wrappers import Response

from console import audit, auth, clients, keys, mailings, messages, pages, people, providers, templates_pages
from console.accounts import ADMIN, OPERATOR, ROLES, SESSION_SECONDS, VIEWER, token_hash
from console.helpers import BadParameter
from console.secret import secret_key
from errors import error_response
from store import MAX_ID, DatabaseUnavailable

log = logging.getLogger("sms_bulk_app")

LANGUAGES = {"en": "English", "ru": "Русский"}
ROLE_NAMES = {VIEWER: _l("viewer"), OPERATOR: _l("operator"), ADMIN: _l("admin")}
# Routes whose errors stay JSON even for a browser: what machines call.
JSON_PREFIXES = ("/api/", "/webhook", "/callbacks/", "/health", "/openapi.json", "/docs")
# No script, style or image from anywhere but this host; no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; form-action 'self';"
                               " frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")
for child in (auth.bp, pages.bp, people.bp, audit.bp, providers.bp, messages.bp, mailings.bp, clients.bp,
              templates_pages.bp, keys.bp):
    bp.register_blueprint(child)


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure also when the request came over HTTPS through the
    trusted proxy (X-Forwarded-Proto, read by ProxyFix), not only when PUBLIC_URL is https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def init_app(app: Flask, csrf_exempt: Iterable[Blueprint]) -> None:
    """Add the console to `app`, whose services are built. Every POST is asked for its CSRF token
    (CSRFProtect, before any view) but those of `csrf_exempt`, which take no cookies (webhook,
    callbacks, API)."""
    config = app.extensions["sms_bulk_app"].config
    app.secret_key = secret_key(config.secret_key, config.data_dir)
    app.config.update(
        SESSION_COOKIE_NAME="sms_console", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(config.public_url and config.public_url.startswith("https://")),
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=SESSION_SECONDS),
        WTF_CSRF_TIME_LIMIT=None)  # a token lives as long as its session: a login page left open still works
    app.session_interface = ConsoleSessionInterface()
    clients.allow_large_import(app)  # before CSRFProtect reads the form
    csrf = CSRFProtect(app)
    for blueprint in csrf_exempt:
        csrf.exempt(blueprint)
    Babel(app, locale_selector=_locale, timezone_selector=lambda: config.default_timezone,
          default_translation_directories=str(Path(__file__).parent / "translations"))
    app.register_blueprint(bp)
    app.register_error_handler(NotFound, _not_found)


def _locale() -> str:
    chosen = session.get("lang")
    return chosen if chosen in LANGUAGES else request.accept_languages.best_match(list(LANGUAGES)) or "en"


@bp.before_request
def _load_user() -> None:
    """g.user: the account of this browser's session, if it is still valid."""
    g.user = None
    if request.endpoint == "console.static":
        return
    token = session.get("sid")
    if token:
        g.user = current_app.extensions["sms_bulk_app"].store.console_session_user(token_hash(token), time.time())
        if g.user is None:
            session.pop("sid")


@bp.before_request
def _ids_in_range() -> None:
    """An id in the address (<int:...>) larger than any the database keeps (MAX_ID, 64 bits) names
    nothing: 404, as a missing one, where the database would refuse the number."""
    if any(isinstance(value, int) and value > MAX_ID for value in (request.view_args or {}).values()):
        abort(404)


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"  # pages show figures, phones and one-time passwords
    return response


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"languages": LANGUAGES, "roles": ROLES, "role_names": ROLE_NAMES, "locale": str(get_locale())}


def error_page(code: int, message: str) -> tuple[str, int]:
    return render_template("error.html", code=code, message=message), code


@bp.errorhandler(CSRFError)
def _csrf_refused(error: CSRFError) -> tuple[str, int]:
    return error_page(400, _("This form has expired or did not come from this site. Go back, reload the page "
                             "and try again."))


@bp.errorhandler(BadParameter)
def _bad_parameter(error: BadParameter) -> tuple[str, int]:
    return error_page(400, error.description)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[str, int]:
    messages = {403: _("Your role does not allow this. Ask an administrator."),
                404: _("There is no such page."),
                405: _("This page does not take this kind of request.")}
    return error_page(error.code or 500, messages.get(error.code, error.name))


@bp.errorhandler(DatabaseUnavailable)
def _database_unavailable(error: DatabaseUnavailable) -> tuple[str, int]:
    log.error("Database unavailable: %s", error)
    return error_page(503, _("The database is unavailable. Try again in a minute."))


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> tuple[str, int]:
    log.exception("Unexpected error on %s %s", request.method, request.path)
    return error_page(500, _("Something went wrong on our side; it is in the service log."))


def _not_found(error: NotFound) -> Any:
    """A page for a browser that asked for a page no route has; JSON for the others, as errors.py answers."""
    wants_page = request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"
    if wants_page and not request.path.startswith(JSON_PREFIXES):
        g.setdefault("user", None)
        return error_page(404, _("There is no such page."))
    return error_response(404, error.description)
