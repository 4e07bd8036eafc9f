"""Users (admin): every account; creating one or resetting its password (a one-time password shown
once), changing its role, disabling and enabling it. An admin does none of these to their own account."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

import audit
from console import accounts
from console.access import requires
from console.accounts import ADMIN, ROLES
from console.forms import UserForm

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("people", __name__)


def _store():
    return current_app.extensions["sms_bulk_app"].store


def _page(form: UserForm, status: int = 200, **shown: object) -> tuple[str, int]:
    return render_template("users.html", form=form, users=_store().users(), **shown), status


@bp.get("/users")
@requires(ADMIN)
def users() -> tuple[str, int]:
    return _page(UserForm())


@bp.post("/users")
@requires(ADMIN)
def create_user() -> tuple[str, int]:
    form = UserForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    try:
        user_id, password = accounts.create(_store(), form.email.data, form.role.data, None, time.time())
    except accounts.AccountExists:
        return _page(form, 400, error=_("There is an account for this email already."))
    except accounts.AccountError:  # the role is one of the form's choices: only the email can be wrong
        return _page(form, 400, error=_("This is not an email address."))
    log.info("Console: user %d created (%s) by user %d", user_id, form.role.data, g.user.id)
    audit.record(_store(), "user.create", "user", user_id, f"role {form.role.data}")
    # Shown in this answer only (never in the session cookie or a redirect's URL).
    return _page(UserForm(formdata=None), 201, created=accounts.normalize_email(form.email.data),
                 one_time_password=password)


def _other_account(user_id: int) -> accounts.User:
    """The account `user_id`: 404 if there is none, 403 if it is the admin's own (they cannot lock
    themselves out; their own password is changed on the Password page)."""
    if user_id == g.user.id:
        abort(403)
    user = next((user for user in _store().users() if user.id == user_id), None)
    if user is None:
        abort(404)
    return user


@bp.post("/users/<int:user_id>/disable")
@requires(ADMIN)
def disable_user(user_id: int) -> Response:
    return _switch(user_id, enable=False)


@bp.post("/users/<int:user_id>/enable")
@requires(ADMIN)
def enable_user(user_id: int) -> Response:
    return _switch(user_id, enable=True)


def _switch(user_id: int, enable: bool) -> Response:
    """Disable or enable another account, audited if that changed it."""
    user = _other_account(user_id)
    if (_store().enable_user if enable else _store().disable_user)(user.id):
        log.info("Console: user %d %s by user %d", user.id, "enabled" if enable else "disabled", g.user.id)
        audit.record(_store(), "user.enable" if enable else "user.disable", "user", user.id)
    return redirect(url_for("console.people.users"))


@bp.post("/users/<int:user_id>/role")
@requires(ADMIN)
def set_role(user_id: int) -> Response | tuple[str, int]:
    user = _other_account(user_id)
    role = request.form.get("role", "")
    if role not in ROLES:
        return _page(UserForm(formdata=None), 400, error=_("Choose one of the roles."))
    if accounts.set_role(_store(), user, role):
        log.info("Console: user %d made %s by user %d", user.id, role, g.user.id)
        audit.record(_store(), "user.role", "user", user.id, f"role {role}")
    return redirect(url_for("console.people.users"))


@bp.post("/users/<int:user_id>/reset-password")
@requires(ADMIN)
def reset_password(user_id: int) -> tuple[str, int]:
    user = _other_account(user_id)
    password = accounts.reset_password(_store(), user, None)
    log.info("Console: password of user %d reset by user %d", user.id, g.user.id)
    audit.record(_store(), "user.reset_password", "user", user.id)
    return _page(UserForm(formdata=None), 200, reset=user.email, one_time_password=password)
