"""Clients: the list and its filters, editing one, importing a CSV with its per-row report.

The same functions as the API's: clients.search / update / import_csv, validated by ClientUpdate.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Flask, abort, g, render_template, request
from flask_babel import gettext as _
from pydantic import ValidationError

import audit
import clients
from api import MAX_IMPORT_BYTES
from clients import NotText
from console.access import requires
from console.accounts import OPERATOR, VIEWER
from console.helpers import BadParameter, config, errors_of, page_number, store, validation_context, words
from schemas import ClientQuery, ClientUpdate
from store import ClientConflict

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("clients", __name__)

PAGE_SIZE = 50
IMPORT_ENDPOINT = "console.clients.import_file"


def allow_large_import(app: Flask) -> None:
    """A CSV of up to MAX_IMPORT_BYTES (as the API's import) on the import page: raised before
    CSRFProtect reads the form, which it does before any view."""

    @app.before_request
    def _raise_limit() -> None:
        if request.endpoint == IMPORT_ENDPOINT:
            request.max_content_length = MAX_IMPORT_BYTES + 64 * 1024  # the multipart's own lines too


@bp.get("/clients")
@requires(VIEWER)
def list_page() -> str:
    tag, code, phone = (request.args.get(name, "").strip() for name in ("tag", "operator_code", "phone"))
    try:  # the API's check of its filters: a phone without a digit would match every client
        ClientQuery(phone=phone or None)
    except ValidationError as error:
        raise BadParameter(_("“%(name)s”: %(problem)s.", name="phone", problem=errors_of(error)["phone"])) from None
    page = page_number()
    items, total = clients.search(store(), tag or None, code or None, phone or None, PAGE_SIZE,
                                  (page - 1) * PAGE_SIZE, config().default_region)
    return render_template("clients.html", clients=items, total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), tag=tag, operator_code=code, phone=phone)


def _edit_page(client: dict, status: int = 200, **shown: object) -> tuple[str, int]:
    return render_template("client.html", client=client, **shown), status


@bp.get("/clients/<int:client_id>")
@requires(VIEWER)
def edit(client_id: int) -> tuple[str, int]:
    client = clients.get(store(), client_id)
    if client is None:
        abort(404)
    return _edit_page(client)


@bp.post("/clients/<int:client_id>")
@requires(OPERATOR)
def update(client_id: int) -> tuple[str, int]:
    current = clients.get(store(), client_id)
    if current is None:
        abort(404)
    form = request.form
    given = {"phone": form.get("phone", ""), "name": form.get("name", ""), "tags": words(form.get("tags")),
             "timezone": form.get("timezone", "")}
    if form.get("operator_code", "").strip():
        given["operator_code"] = form["operator_code"].strip()
    user = form.get("moyklass_user_id", "").strip()
    given["moyklass_user_id"] = int(user) if user.isascii() and user.isdigit() else (user or None)
    shown = current | given
    try:
        changes = ClientUpdate.model_validate(given, context=validation_context()).model_dump(exclude_unset=True)
        if changes["phone"] == current["phone"] and "operator_code" not in changes:
            del changes["phone"]  # unchanged: its operator code, perhaps set by hand, stays
        changed = clients.update(store(), client_id, changes)
    except ValidationError as error:
        return _edit_page(shown, 400, errors=errors_of(error))
    except ClientConflict:
        return _edit_page(shown, 409, errors={"phone": _("Another client has this phone or MoyKlass user.")})
    audit.record(store(), "client.update", "client", client_id, "fields: " + ", ".join(sorted(changes)))
    log.info("Console: client %d changed by user %d", client_id, g.user.id)
    return _edit_page(changed, 200, saved=True)


@bp.get("/clients/import")
@requires(OPERATOR)
def import_page() -> str:
    return render_template("clients_import.html")


@bp.post("/clients/import")
@requires(OPERATOR)
def import_file() -> tuple[str, int]:
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return render_template("clients_import.html", error=_("Choose a CSV file.")), 400
    try:
        report = clients.import_csv(store(), upload.read(), config().default_timezone, config().default_region)
    except NotText as error:
        return render_template("clients_import.html", error=str(error)), 400
    counts = f"{report['created']} created, {report['updated']} updated, {len(report['rejected'])} rejected"
    audit.record(store(), "client.import", "client", None, f"{upload.filename}: {counts}")
    log.info("Console: clients imported by user %d: %s", g.user.id, counts)
    return render_template("clients_import.html", report=report), 200

