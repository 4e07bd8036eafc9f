"""Templates and event texts: editing with a live GSM-7 / UCS-2 counter and the transliteration
suggestion, every version, approval (admin).

The same functions as the API's (templates.create / edit / approve). A version an admin writes is
approved at once, as one a key with the scope templates:approve writes; an operator's is a draft.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

import audit
import templates
from console.access import requires
from console.accounts import ADMIN, OPERATOR, VIEWER, may
from console.helpers import config, number_parameter, store
from store import TemplateConflict
from templates import APPROVE_SCOPE, NAME, NotLatest
from texts import TemplateError, measure, transliterate

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("templates_pages", __name__)


def counter(text: str) -> dict[str, Any]:
    """The text as a phone takes it (each placeholder written as its own name): encoding, characters
    counted as the encoding counts them, parts; and the text transliterated when that makes it GSM-7."""
    try:
        sample = templates.sample(text)
    except TemplateError as error:
        return {"error": str(error)}
    measured = measure(sample.text)
    result: dict[str, Any] = {"encoding": sample.encoding, "parts": sample.parts, "units": measured.units}
    if sample.encoding == "UCS-2":
        suggestion = transliterate(text)
        try:
            suggested = templates.sample(suggestion)
        except TemplateError:
            suggested = None
        if suggested is not None and suggested.encoding == "GSM-7":
            result["suggestion"] = {"text": suggestion, "parts": suggested.parts}
    return result


def _by() -> tuple[str, frozenset[str]]:
    """Who writes a version, as the versions list shows it, and whether it is approved at once."""
    return f"console:{g.user.email}", frozenset({APPROVE_SCOPE}) if may(g.user, ADMIN) else frozenset()


@bp.get("/templates")
@requires(VIEWER)
def list_page() -> str:
    settings = config()
    events = [{"event": event, "setting": setting, "text": settings.template_for(event).source
               if settings.template_for(event) else None,
               "template": settings.sms_template_by_event.get(event)}
              for event, setting in settings.sending_events().items()]
    for event in events:
        event["counter"] = counter(event["text"]) if event["text"] else None
    return render_template("templates_list.html", templates=[templates.public(t) for t in store().templates()],
                           events=events)


@bp.post("/texts/measure")
@requires(VIEWER)
def measure_text() -> str:
    """The counter of the text being written, for the page's script (without it, each page shows the
    counter of the text it was given)."""
    return render_template("_counter.html", counter=counter(request.form.get("text", "")))


@bp.get("/templates/new")
@requires(OPERATOR)
def new() -> str:
    return render_template("template_edit.html", template=None, text="", name="", counter=counter(""))


@bp.post("/templates")
@requires(OPERATOR)
def create() -> Response | tuple[str, int]:
    name, text = request.form.get("name", "").strip(), request.form.get("text", "")
    error = _text_problem(text)
    if not NAME.fullmatch(name):
        error = _("A name has lower-case letters, digits, - and _ (at most 64), and starts with a letter or digit.")
    if error is None:
        try:
            created = templates.create(store(), name, text, *_by())
        except TemplateConflict:
            error = _("There is a template of this name already.")
    if error is not None:
        return render_template("template_edit.html", template=None, text=text, name=name, counter=counter(text),
                               error=error), 400
    audit.record(store(), "template.create", "template", created.id,
                 f"{created.name}; approved version {created.approved_version}")
    log.info("Console: template %d created by user %d", created.id, g.user.id)
    return redirect(url_for("console.templates_pages.edit", template_id=created.id))


def _text_problem(text: str) -> str | None:
    if not text.strip() or len(text) > 1000:
        return _("A text has 1 to 1000 characters.")
    try:
        templates.check_text(text)
    except ValueError as error:
        return str(error)
    return None


def _edit_page(template_id: int, status: int = 200, **shown: Any) -> tuple[str, int]:
    stored = store().template(template_id)
    if stored is None:
        abort(404)
    public = templates.public(stored)
    text = shown.pop("text", public["text"])
    return render_template("template_edit.html", template=public, text=text, name=public["name"],
                           counter=counter(text), versions=list(reversed(templates.versions(store(), template_id))),
                           **shown), status


@bp.get("/templates/<int:template_id>")
@requires(VIEWER)
def edit(template_id: int) -> tuple[str, int]:
    return _edit_page(template_id)


@bp.post("/templates/<int:template_id>")
@requires(OPERATOR)
def save(template_id: int) -> Response | tuple[str, int]:
    text = request.form.get("text", "")
    error = _text_problem(text)
    if error is not None:
        return _edit_page(template_id, 400, text=text, error=error)
    changed = templates.edit(store(), template_id, text, *_by())
    if changed is None:
        abort(404)
    audit.record(store(), "template.edit", "template", template_id,
                 f"version {changed.version}; approved version {changed.approved_version}")
    log.info("Console: template %d edited by user %d", template_id, g.user.id)
    return redirect(url_for("console.templates_pages.edit", template_id=template_id))


@bp.post("/templates/<int:template_id>/approve")
@requires(ADMIN)
def approve(template_id: int) -> Response | tuple[str, int]:
    """Audited when it approves: approving the version approved already changes nothing."""
    version = number_parameter("version", request.form.get("version"))
    current = store().template(template_id)
    if current is None:
        abort(404)
    try:
        approved = templates.approve(store(), template_id, version, _by()[0])
    except NotLatest:
        return _edit_page(template_id, 409, error=_("A newer version was written meanwhile: read it, then approve."))
    if approved is None:
        abort(404)
    if approved.approved_version != current.approved_version:
        audit.record(store(), "template.approve", "template", template_id, f"version {approved.approved_version}")
        log.info("Console: template %d version %d approved by user %d", template_id, approved.approved_version,
                 g.user.id)
    return redirect(url_for("console.templates_pages.edit", template_id=template_id))
