"""Providers and phones: each provider's health as /health and `status` give it
(Dispatcher.provider_health), an admin's pause and resume through the store functions the
worker's own pauses use (a pause lasts until its time, or until resumed); the phones' health as
/health gives it (devices.health), how to enroll one (admins only), disabling and revoking one."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

import audit
import devices
from console.access import requires
from console.accounts import ADMIN, VIEWER, may

log = logging.getLogger("sms_bulk_app")

PAUSE_HOURS = (1, 8, 24, 168)
PHONE_API_PATH = "/api/mobile/v1"

bp = Blueprint("providers", __name__)


def _services():
    return current_app.extensions["sms_bulk_app"]


@bp.get("/providers")
@requires(VIEWER)
def providers_page() -> str:
    services = _services()
    now = time.time()
    settings = devices.PhoneSettings.of(services.config)
    enrollment = None
    if settings is not None and may(g.user, ADMIN):  # the private token: admins only, in this answer only
        server = (services.config.public_url or request.host_url).rstrip("/") + PHONE_API_PATH
        enrollment = {"server": server, "private_token": settings.private_token}
    return render_template("providers.html", providers=services.dispatcher.provider_health(now),
                           pools=services.dispatcher.pools, pause_hours=PAUSE_HOURS,
                           phones=devices.health(services.store, settings, now) if settings else None,
                           enrollment=enrollment)


def _pausable(name: str) -> str:
    """A provider the worker sends through (the phones' pool is stopped by disabling its phones)."""
    dispatcher = _services().dispatcher
    if name not in dispatcher.gateways or name in dispatcher.pools:
        abort(404)
    return name


@bp.post("/providers/<name>/pause")
@requires(ADMIN)
def pause(name: str) -> Response:
    hours = request.form.get("hours", type=int)
    if hours not in PAUSE_HOURS:
        abort(400)
    _services().store.pause_provider(_pausable(name), time.time() + hours * 3600,
                                     f"paused in the console by user {g.user.id}")
    log.warning("Console: provider %s paused for %d h by user %d", name, hours, g.user.id)
    audit.record(_services().store, "provider.pause", "provider", name, f"for {hours} h")
    return redirect(url_for("console.providers.providers_page"))


@bp.post("/providers/<name>/resume")
@requires(ADMIN)
def resume(name: str) -> Response:
    if _services().store.resume_provider(_pausable(name)):
        log.warning("Console: provider %s resumed by user %d", name, g.user.id)
        audit.record(_services().store, "provider.resume", "provider", name)
    return redirect(url_for("console.providers.providers_page"))


@bp.post("/phones/<int:phone_id>/<any(disable, revoke):action>")
@requires(ADMIN)
def phone_action(phone_id: int, action: str) -> Response:
    """The same store functions as `phones disable|revoke` and /api/v1/phones."""
    store = _services().store
    if devices.PhoneSettings.of(_services().config) is None or store.device(phone_id) is None:
        abort(404)
    done = store.disable_device(phone_id, time.time()) if action == "disable" else store.revoke_device_token(phone_id)
    if done:
        log.warning("Console: phone %d %sd by user %d", phone_id, action, g.user.id)
        audit.record(store, f"phone.{action}", "phone", phone_id)
    return redirect(url_for("console.providers.providers_page"))
