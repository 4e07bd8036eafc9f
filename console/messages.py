"""Messages: search (phone in any form, status, event, mailing, days), one message's history, resend.

Staff who are logged in see phones whole (they search by them and answer the people behind them);
the log lines this module writes name messages by id only.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

import audit
import mailings
from console.access import requires
from console.accounts import OPERATOR, VIEWER, may
from console.helpers import config, day_parameter, number_parameter, page_number, store, zone
from mailings import MailingConflict
from phones import InvalidPhone, to_e164
from store import CANCELED_STATE, FAILED, FINISHED, SCHEDULED, STARTED, STATUSES, UNDELIVERED

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("messages", __name__)

PAGE_SIZE = 50
DEFAULT_DAYS = 7
MAX_DAYS = 92  # a search reads the index of these days: bounded, however old the outbox
RESENDABLE = (FAILED, UNDELIVERED)
STATE_NAMES = {SCHEDULED: _l("scheduled"), STARTED: _l("sending"), FINISHED: _l("finished"),
               CANCELED_STATE: _l("canceled")}


@bp.app_context_processor
def _page_globals() -> dict[str, Any]:
    """`can(role)` in every page: whether to offer an action (the action checks again with @requires);
    the mailings' states in the reader's language."""
    return {"can": lambda role: g.get("user") is not None and may(g.user, role), "state_names": STATE_NAMES}


@bp.get("/messages")
@requires(VIEWER)
def search() -> tuple[str, int]:
    today = datetime.now(zone()).date()
    last = day_parameter("to", today)
    first = day_parameter("from", last - timedelta(days=DEFAULT_DAYS - 1))
    problems = []
    if first > last or (last - first).days >= MAX_DAYS:
        problems.append(_("Choose at most %(days)d days, the first before the last.", days=MAX_DAYS))
    phone_text = request.args.get("phone", "").strip()
    phone = None
    if phone_text:
        try:
            phone = to_e164(phone_text, config().default_region)
        except InvalidPhone as error:
            problems.append(_("%(phone)s: not a phone number that can receive SMS (%(reason)s).",
                              phone=phone_text, reason=error.reason))
    status = request.args.get("status") or None
    if status not in (None, *STATUSES):
        status = None
    mailing_text = request.args.get("mailing", "").strip()
    mailing_id = number_parameter("mailing", mailing_text)
    event = request.args.get("event", "").strip() or None
    page = page_number()
    found: list[dict] = []
    if not problems:
        start = datetime.combine(first, datetime.min.time(), zone()).timestamp()
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), zone()).timestamp()
        found = store().find_messages(start, end, phone, status, event, mailing_id, PAGE_SIZE + 1,
                                      (page - 1) * PAGE_SIZE)
    arguments = {key: value for key, value in request.args.items() if key != "page"}
    return render_template(
        "messages.html", messages=found[:PAGE_SIZE], more=len(found) > PAGE_SIZE, page=page, statuses=STATUSES,
        first=first, last=last, phone=phone_text, e164=phone, status=status, event=event or "",
        mailing=mailing_text, events=sorted(config().sending_events()), problems=problems,
        arguments=arguments), 400 if problems else 200


@bp.get("/messages/<int:message_id>")
@requires(VIEWER)
def detail(message_id: int) -> str:
    message = store().message(message_id)
    if message is None:
        abort(404)
    return render_template("message.html", message=message, resendable=message["status"] in RESENDABLE,
                           resent=request.args.get("resent"))


@bp.post("/messages/<int:message_id>/resend")
@requires(OPERATOR)
def resend(message_id: int) -> Response | tuple[str, int]:
    """The outbox's retry (the command line's retry-failed) for this one message; a mailing's message
    through its mailing's (before its end, starting a finished mailing again)."""
    message = store().message(message_id)
    if message is None:
        abort(404)
    now = time.time()
    try:
        if message["mailing_id"] is not None:
            queued = mailings.retry_failed(store(), message["mailing_id"], now, message_id=message_id)
        else:
            queued = store().retry_failed(now + config().sms_valid_seconds, message_id=message_id)
    except MailingConflict:
        queued = 0
    if not queued:
        return render_template("message.html", message=message, resendable=False, error=_(
            "This message cannot be sent again: only a FAILED or UNDELIVERED message can, and a mailing's only"
            " before the mailing ends.")), 409
    audit.record(store(), "message.resend", "message", message_id, "queued again")
    log.info("Console: message %d queued again by user %d", message_id, g.user.id)
    return redirect(url_for("console.messages.detail", message_id=message_id, resent=1))
