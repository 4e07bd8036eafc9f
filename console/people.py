"""Users (admin): every account, creating one (its one-time password shown once), disabling one."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, abort, current_app, g, redirect, render_template, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

import audit
from console import accounts
from console.access import requires
from console.accounts import ADMIN
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


@bp.post("/users/<int:user_id>/disable")
@requires(ADMIN)
def disable_user(user_id: int) -> Response:
    if user_id == g.user.id:
        abort(403)  # an admin cannot lock themselves out
    if _store().disable_user(user_id):
        log.info("Console: user %d disabled by user %d", user_id, g.user.id)
        audit.record(_store(), "user.disable", "user", user_id)
    return redirect(url_for("console.people.users"))
