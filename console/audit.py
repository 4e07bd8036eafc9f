"""The audit log (admin): every change, the newest first, filtered by actor, action and days."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, render_template, request, url_for

import audit
from console.access import requires
from console.accounts import ADMIN
from console.helpers import day_parameter, number_parameter

PAGE_SIZE = 50

bp = Blueprint("audit", __name__)


def _midnight(day: date | None, timezone: str) -> float | None:
    return datetime.combine(day, time(), ZoneInfo(timezone)).timestamp() if day else None


@bp.get("/audit")
@requires(ADMIN)
def audit_page() -> str:
    services = current_app.extensions["sms_bulk_app"]
    timezone = services.config.default_timezone
    actor = request.args.get("actor") or None
    action = request.args.get("action") if request.args.get("action") in audit.ACTIONS else None
    first, last = day_parameter("from", None), day_parameter("to", None)
    entries = services.store.audit_entries(
        actor, action, _midnight(first, timezone), _midnight(last + timedelta(days=1) if last else None, timezone),
        number_parameter("before", request.args.get("before")), PAGE_SIZE + 1)
    filters = {"actor": actor or "", "action": action or "", "from": first.isoformat() if first else "",
               "to": last.isoformat() if last else ""}
    older = url_for("console.audit.audit_page", **filters, before=entries[PAGE_SIZE - 1].id) \
        if len(entries) > PAGE_SIZE else None
    return render_template("audit.html", entries=entries[:PAGE_SIZE], filters=filters, older=older,
                           actors=services.store.audit_actors(), actions=audit.ACTIONS,
                           first_page=url_for("console.audit.audit_page", **filters)
                           if request.args.get("before") else None)
