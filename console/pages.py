"""The dashboard: today's figures, the last 14 days, the queue, recent failures."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, render_template

from console import dashboard
from console.access import requires
from console.accounts import VIEWER

bp = Blueprint("pages", __name__)


@bp.get("/")
@requires(VIEWER)
def dashboard_page() -> str:
    app_services = current_app.extensions["sms_bulk_app"]
    now = time.time()
    return render_template("dashboard.html", now=now,
                           figures=dashboard.figures(app_services.store, app_services.config.default_timezone, now))
