"""Login, logout, password change and the language switch."""
from __future__ import annotations

import logging
import math
import time
import unicodedata
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from werkzeug.urls import iri_to_uri
from werkzeug.wrappers import Response

import audit
from console import accounts
from console.access import PUBLIC, requires
from console.forms import LanguageForm, LoginForm, PasswordForm

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("auth", __name__)


def _store():
    return current_app.extensions["sms_bulk_app"].store


def _local(target: str | None) -> str:
    """`target` as the Location header will carry it, if that is a plain path on this site; else the
    dashboard. Never another host: not //evil.example, /\\evil.example or https://evil.example, nor a
    path with a control character (urlsplit, and browsers, drop a tab, CR or LF: /<tab>/evil.example
    is sent as //evil.example) or a backslash (which browsers read as /)."""
    if target and not any(char == "\\" or unicodedata.category(char) == "Cc" for char in target):
        sent = iri_to_uri(target)  # what Werkzeug writes into the header
        parts = urlsplit(sent)
        if sent.startswith("/") and not sent.startswith("//") and not parts.scheme and not parts.netloc:
            return sent
    return url_for("console.pages.dashboard_page")


@bp.route("/login", methods=["GET", "POST"])
@requires(PUBLIC)
def login() -> Response | tuple[str, int] | str:
    form = LoginForm(next=request.args.get("next"))
    if not form.validate_on_submit():
        return render_template("login.html", form=form), 400 if form.is_submitted() else 200
    now = time.time()
    result = accounts.log_in(_store(), form.email.data, form.password.data, request.remote_addr or "-", now)
    if result.retry_after is not None:
        minutes = math.ceil(result.retry_after / 60)
        log.warning("Console login throttled (too many failures for the account or the address)")
        _login_failed(form.email.data, "throttled")
        return render_template("login.html", form=form, error=_(
            "Too many failed logins. Try again in %(minutes)d min.", minutes=minutes)), 429
    if result.user is None:
        log.info("Console login refused")
        _login_failed(form.email.data, "wrong email or password")
        return render_template("login.html", form=form, error=_("Wrong email or password.")), 401
    session.clear()
    session.permanent = True
    session["sid"] = accounts.start_session(_store(), result.user, now)
    log.info("Console login: user %d (%s)", result.user.id, result.user.role)
    audit.record(_store(), "login", "user", result.user.id, f"from {request.remote_addr}", user=result.user)
    if result.user.must_change_password:
        return redirect(url_for("console.auth.password"))
    return redirect(_local(form.next.data))


@bp.post("/logout")
@requires(accounts.VIEWER, first_password=True)
def logout() -> Response:
    _store().end_console_session(accounts.token_hash(session["sid"]))
    audit.record(_store(), "logout", "user", g.user.id)
    session.clear()
    return redirect(url_for("console.auth.login"))


@bp.route("/password", methods=["GET", "POST"])
@requires(accounts.VIEWER, first_password=True)
def password() -> Response | tuple[str, int] | str:
    form = PasswordForm()
    if not form.validate_on_submit():
        return render_template("password.html", form=form), 400 if form.is_submitted() else 200
    try:
        accounts.change_password(_store(), g.user, form.current.data, form.new.data, session["sid"])
    except accounts.AccountError as error:
        return render_template("password.html", form=form, error=_translated(error)), 400
    log.info("Console password changed: user %d", g.user.id)
    audit.record(_store(), "user.password", "user", g.user.id)
    return redirect(url_for("console.pages.dashboard_page"))


def _login_failed(email: str, why: str) -> None:
    """Audited with the account tried as its object (none if the email has none): never what was typed."""
    tried = _store().user_by_email(email.strip().lower())
    audit.record(_store(), "login.failed", "user", tried.id if tried else None, f"{why}, from {request.remote_addr}")


def _translated(error: accounts.AccountError) -> str:
    """The page's words for a refusal of accounts.py (whose own words are the command line's)."""
    texts = {
        accounts.WRONG_PASSWORD: _("The current password is wrong."),
        accounts.SAME_PASSWORD: _("The new password must differ from the current one."),
        accounts.EMAIL_AS_PASSWORD: _("A password must not be the email address."),
    }
    return texts.get(str(error), _("A password has at least %(count)d characters.",
                                   count=accounts.MIN_PASSWORD_LENGTH))


@bp.post("/language")
@requires(PUBLIC)
def language() -> Response:
    form = LanguageForm()
    if form.validate_on_submit() and form.lang.data in ("en", "ru"):
        session["lang"] = form.lang.data
    return redirect(_local(form.next.data))
