"""Mailings: the list with each one's progress, creating one with a live preview, cancel, retry, CSV.

Every action is the API's: mailings.create / cancel / retry_failed, templates.with_mailing_text,
mailings.estimate, validated by the same MailingCreate.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, abort, g, redirect, render_template, request, stream_with_context, url_for
from flask_babel import gettext as _
from pydantic import ValidationError
from werkzeug.datastructures import MultiDict

import audit
import mailings
import templates
from console.access import requires
from console.accounts import OPERATOR, VIEWER
from console.helpers import (
    config,
    errors_of,
    local_input,
    local_moment,
    page_number,
    page_or_fragment,
    store,
    validation_context,
    words,
)
from mailings import MailingConflict
from models import MAILING_FIELDS, MailingCreate
from store import CANCELED_STATE, SCHEDULED, STARTED, STATUSES
from templates import TemplateUnusable
from texts import Template, measure, transliterate

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("mailings", __name__)

PAGE_SIZE = 50
REFRESH_SECONDS = 2  # how often a page of a mailing being sent reloads itself


def _data(form: MultiDict) -> dict[str, Any]:
    """The form as the API's body of POST /mailings: times in the school's time zone."""
    data: dict[str, Any] = {"start_at": local_moment(form.get("start_at", "")),
                            "end_at": local_moment(form.get("end_at", ""))}
    if form.get("template"):
        data["template"] = form["template"]
    else:
        data["text"] = form.get("text", "")
    data["filter"] = {"all": True} if form.get("all") else {"tags": words(form.get("tags")),
                                                             "operator_codes": words(form.get("operator_codes"))}
    if form.get("window_from") or form.get("window_to"):
        data["window"] = {"from": form.get("window_from", ""), "to": form.get("window_to", "")}
    return data


def _validated(form: MultiDict) -> tuple[MailingCreate | None, dict[str, str]]:
    """The mailing, with its template's text, or the errors field by field."""
    try:
        body = MailingCreate.model_validate(_data(form), context=validation_context())
        return templates.with_mailing_text(store(), body), {}
    except ValidationError as error:
        return None, errors_of(error)
    except TemplateUnusable as error:
        return None, {error.field: str(error)}


def _preview(body: MailingCreate) -> dict[str, Any]:
    """What the mailing would send: its text for the first matching client, measured, and the estimate."""
    found, _total = store().search_clients(body.filter.tags, body.filter.operator_codes, None, None, 1, 0)
    client = found[0] if found else None
    text = mailings.personal_text(Template(body.text, MAILING_FIELDS), client["name"] if client else "")
    measured = measure(text)
    suggestion = transliterate(text) if measured.name == "UCS-2" else None
    return {"client": client, "text": text, "encoding": measured.name, "parts": measured.segments,
            "estimate": mailings.estimate(store(), body, config()),
            "suggestion": suggestion if suggestion and measure(suggestion).name == "GSM-7" else None}


def _form_page(form: MultiDict, status: int = 200, **shown: Any) -> tuple[str, int]:
    approved = [stored.name for stored in store().templates() if stored.approved_text is not None]
    return page_or_fragment("mailing_new.html", "_mailing_preview.html", status, form=form, approved=approved,
                            **shown)


@bp.get("/mailings")
@requires(VIEWER)
def list_page() -> str:
    stats = {item["id"]: item for item in mailings.stats_all(store())}
    items = [mailing | {"stats": stats.get(mailing["id"])} for mailing in reversed(mailings.list_all(store()))]
    return render_template("mailings.html", mailings=items, refresh=_refresh(items))


def _refresh(items: list[dict[str, Any]]) -> int | None:
    """Seconds until the page reloads: while a mailing is sending, or is about to start."""
    soon = datetime.now().astimezone() + timedelta(seconds=60)
    busy = any(item["state"] == STARTED or (item["state"] == SCHEDULED and item["start_at"] <= soon) for item in items)
    return REFRESH_SECONDS if busy else None


@bp.get("/mailings/new")
@requires(OPERATOR)
def new() -> tuple[str, int]:
    now = time.time()
    return _form_page(MultiDict({"start_at": local_input(now), "end_at": local_input(now + 86400)}))


@bp.post("/mailings/preview")
@requires(OPERATOR)
def preview() -> tuple[str, int]:
    body, errors = _validated(request.form)
    return _form_page(request.form, 200, errors=errors, preview=_preview(body) if body else None)


@bp.post("/mailings")
@requires(OPERATOR)
def create() -> Response | tuple[str, int]:
    body, errors = _validated(request.form)
    if body is None:
        return _form_page(request.form, 400, errors=errors)
    created = mailings.create(store(), body)
    audit.record(store(), "mailing.create", "mailing", created["id"])
    log.info("Console: mailing %d created by user %d", created["id"], g.user.id)
    return redirect(url_for("console.mailings.detail", mailing_id=created["id"]))


def _detail(mailing_id: int, status: int = 200, **shown: Any) -> tuple[str, int]:
    mailing = mailings.get(store(), mailing_id)
    if mailing is None:
        abort(404)
    state = request.args.get("status") if request.args.get("status") in STATUSES else None
    page = page_number()
    items, total = mailings.messages(store(), mailing_id, state, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    return render_template("mailing.html", mailing=mailing, stats=mailings.stats(store(), mailing_id),
                           messages=items, total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)),
                           status=state, statuses=STATUSES, refresh=_refresh([mailing]),
                           canceled_state=CANCELED_STATE, **shown), status


@bp.get("/mailings/<int:mailing_id>")
@requires(VIEWER)
def detail(mailing_id: int) -> tuple[str, int]:
    return _detail(mailing_id)


@bp.post("/mailings/<int:mailing_id>/cancel")
@requires(OPERATOR)
def cancel(mailing_id: int) -> Response | tuple[str, int]:
    """Audited when it cancels: a mailing cancelled already stays as it was (and its page says so)."""
    try:
        mailing, canceled = mailings.cancel(store(), mailing_id)
    except MailingConflict:
        return _detail(mailing_id, 409, error=_("This mailing has finished: nothing of it is left to cancel."))
    if mailing is None:
        abort(404)
    if canceled:
        audit.record(store(), "mailing.cancel", "mailing", mailing_id)
        log.info("Console: mailing %d canceled by user %d", mailing_id, g.user.id)
    return redirect(url_for("console.mailings.detail", mailing_id=mailing_id))


@bp.post("/mailings/<int:mailing_id>/retry-failed")
@requires(OPERATOR)
def retry_failed(mailing_id: int) -> Response | tuple[str, int]:
    if mailings.get(store(), mailing_id) is None:
        abort(404)
    try:
        queued = mailings.retry_failed(store(), mailing_id, time.time())
    except MailingConflict:
        return _detail(mailing_id, 409, error=_("This mailing is not running: nothing can be sent for it any more."))
    audit.record(store(), "mailing.retry", "mailing", mailing_id, f"{queued} queued again")
    log.info("Console: %d messages of mailing %d queued again by user %d", queued, mailing_id, g.user.id)
    return redirect(url_for("console.mailings.detail", mailing_id=mailing_id, queued=queued))


@bp.get("/mailings/<int:mailing_id>/messages.csv")
@requires(VIEWER)
def messages_csv(mailing_id: int) -> Response:
    if mailings.get(store(), mailing_id) is None:
        abort(404)
    state = request.args.get("status") if request.args.get("status") in STATUSES else None
    rows = stream_with_context(mailings.messages_csv(store(), mailing_id, state))
    return Response(rows, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="mailing-{mailing_id}-messages.csv"'})
