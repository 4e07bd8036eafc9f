"""API keys (admin): every key, creating one (the key shown once), revoking one. The same functions
as the command line's `keys` (api_keys.create / list_all / revoke)."""
from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

import api_keys
import audit
from console.access import requires
from console.accounts import ADMIN
from console.helpers import store
from models import whole_number

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("keys", __name__)

MAX_QUOTA = 10_000_000


def _page(status: int = 200, **shown: object) -> tuple[str, int]:
    keys = [key | {"scopes": key["scopes"].split()} for key in api_keys.list_all(store())]
    return render_template("keys.html", keys=keys, scopes=api_keys.SCOPES,
                           default_quota=api_keys.DEFAULT_DAILY_QUOTA, today=datetime.now(UTC).date().isoformat(),
                           **shown), status


@bp.get("/keys")
@requires(ADMIN)
def list_page() -> tuple[str, int]:
    return _page()


@bp.post("/keys")
@requires(ADMIN)
def create() -> tuple[str, int]:
    name = request.form.get("name", "").strip()
    scopes = [scope for scope in api_keys.SCOPES if scope in request.form.getlist("scopes")]
    quota_text = request.form.get("daily_quota", "").strip()
    quota = whole_number(quota_text, MAX_QUOTA)
    if not name or len(name) > 64 or not scopes or (quota_text and quota is None):
        return _page(400, error=_("Give the key a name (at most 64 characters), at least one scope, and a daily"
                                  " quota from 1 to %(most)d (or leave it empty).", most=MAX_QUOTA))
    key_id, key = api_keys.create(store(), name, scopes, quota or api_keys.DEFAULT_DAILY_QUOTA)
    audit.record(store(), "key.create", "key", key_id, f"{name}; {' '.join(scopes)}")
    log.info("Console: API key %d (%s) created by user %d", key_id, " ".join(scopes), g.user.id)
    # Shown in this answer only (never in the session cookie, a redirect's URL or a log).
    return _page(201, created=name, key=key)


@bp.post("/keys/<int:key_id>/revoke")
@requires(ADMIN)
def revoke(key_id: int) -> Response:
    if not any(key["id"] == key_id for key in api_keys.list_all(store())):
        abort(404)
    if api_keys.revoke(store(), key_id):
        audit.record(store(), "key.revoke", "key", key_id)
        log.info("Console: API key %d revoked by user %d", key_id, g.user.id)
    return redirect(url_for("console.keys.list_page"))
