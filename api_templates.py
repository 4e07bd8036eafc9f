"""/api/v1 routes of templates, batch requests and reports, declared with api.endpoint on api's
blueprint (imported by sms_bulk_app before the blueprint is registered)."""
from __future__ import annotations

from flask import Response, g, stream_with_context

import audit
import batch_requests
import reports
import templates
from api import _answer, _found, _services, _validation_context, bp, endpoint
from batch_requests import NothingToSend
from errors import ApiError, error_response
from schemas import (
    ApproveQuery,
    BatchRequestCreate,
    BatchRequestCreated,
    BatchRequestInfo,
    BatchRequestRejected,
    Error,
    ReportQuery,
    ReportSummary,
    SmsTemplate,
    SmsTemplateList,
    TemplateCreate,
    TemplateUpdate,
    TemplateVersionList,
)
from store import TemplateConflict
from templates import NotLatest, TemplateUnusable

MAX_REQUEST_BYTES = 1024 * 1024  # 5,000 recipients with their variables


@bp.errorhandler(TemplateUnusable)
def _template_unusable(error: TemplateUnusable) -> tuple[Response, int]:
    return error_response(400, "invalid request", errors={error.field: str(error)})


# --- templates ---

@endpoint("POST", "/templates", summary="Create a template (a draft unless the key may approve it)",
          scope="templates:write", body=TemplateCreate, responses={201: SmsTemplate, 409: (Error, "The name is taken")})
def create_template(body: TemplateCreate):
    try:
        created = templates.create(_services().store, body.name, body.text, g.api_key.name, g.api_key.scopes)
    except TemplateConflict as error:
        raise ApiError(409, str(error))
    audit.record(_services().store, "template.create", "template", created.id,
                 f"{created.name}; approved version {created.approved_version}")
    return _answer(SmsTemplate, templates.public(created), 201)


@endpoint("GET", "/templates", summary="List templates", scope="read", responses={200: SmsTemplateList})
def list_templates():
    return _answer(SmsTemplateList, {"items": [templates.public(t) for t in _services().store.templates()]})


@endpoint("GET", "/templates/{template_id}", summary="Read a template: its latest version, measured on a sample,"
          " and its approved one", scope="read", responses={200: SmsTemplate, 404: Error})
def get_template(template_id: int):
    found = _found(_services().store.template(template_id), "template", template_id)
    return _answer(SmsTemplate, templates.public(found))


@endpoint("PATCH", "/templates/{template_id}", summary="Edit a template: a new version (a draft unless the key may"
          " approve it)", scope="templates:write", body=TemplateUpdate, responses={200: SmsTemplate, 404: Error})
def update_template(template_id: int, body: TemplateUpdate):
    changed = _found(templates.edit(_services().store, template_id, body.text, g.api_key.name, g.api_key.scopes),
                     "template", template_id)
    audit.record(_services().store, "template.edit", "template", template_id,
                 f"version {changed.version}; approved version {changed.approved_version}")
    return _answer(SmsTemplate, templates.public(changed))


@endpoint("GET", "/templates/{template_id}/versions", summary="Every version of a template", scope="read",
          responses={200: TemplateVersionList, 404: Error})
def template_versions(template_id: int):
    found = _found(templates.versions(_services().store, template_id), "template", template_id)
    return _answer(TemplateVersionList, {"items": found})


@endpoint("POST", "/templates/{template_id}/approve", summary="Approve a template's latest version",
          scope="templates:approve", query=ApproveQuery,
          responses={200: SmsTemplate, 404: Error, 409: (Error, "`version` is not the latest any more")})
def approve_template(template_id: int, query: ApproveQuery):
    try:
        approved = templates.approve(_services().store, template_id, query.version, g.api_key.name)
    except NotLatest as error:
        raise ApiError(409, str(error))
    approved = _found(approved, "template", template_id)
    audit.record(_services().store, "template.approve", "template", template_id, f"version {approved.approved_version}")
    return _answer(SmsTemplate, templates.public(approved))


# --- batch requests ---

@endpoint("POST", "/requests", summary="Send a template to up to 5,000 recipients, each with its variables",
          scope="messages:send", body=BatchRequestCreate, max_body=MAX_REQUEST_BYTES,
          responses={201: BatchRequestCreated, 400: (BatchRequestRejected, "Invalid, or every recipient rejected"),
                     413: (Error, "The body is larger than 1 MiB")})
def create_batch_request(body: BatchRequestCreate):
    services = _services()
    try:
        accepted = batch_requests.accept(services.store, services.config, body.template, body.priority,
                                         body.recipients, _validation_context(), g.api_key.id)
    except NothingToSend as error:
        raise ApiError(400, str(error), rejected=error.rejected)
    audit.record(services.store, "batch_request.create", "batch_request", accepted["id"],
                 f"template {accepted['template']}: {accepted['queued']} queued, {len(accepted['rejected'])} rejected")
    return _answer(BatchRequestCreated, accepted, 201)


@endpoint("GET", "/requests/{request_id}", summary="A batch request and its messages counted by status",
          scope="read", responses={200: BatchRequestInfo, 404: Error})
def get_batch_request(request_id: int):
    found = batch_requests.state(_services().store, request_id)
    return _answer(BatchRequestInfo, _found(found, "request", request_id))


# --- reports ---

@endpoint("GET", "/reports/summary", summary="Messages per day (DEFAULT_TIMEZONE) and provider: sent, delivered,"
          " failed, parts, cost", scope="read", query=ReportQuery, responses={200: ReportSummary})
def report_summary(query: ReportQuery):
    timezone = _services().config.default_timezone
    lines = reports.summary(_services().store, getattr(query, "from"), query.to, timezone)
    return _answer(ReportSummary, {"timezone": timezone, "items": lines})


@endpoint("GET", "/reports/messages.csv", summary="Every message queued in those days, as CSV, streamed",
          scope="read", query=ReportQuery, responses={200: (None, "CSV, one message a row")},
          response_content={200: "text/csv"})
def report_messages_csv(query: ReportQuery):
    first, last = getattr(query, "from"), query.to
    rows = stream_with_context(reports.messages_csv(_services().store, first, last,
                                                    _services().config.default_timezone))
    return Response(rows, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="messages-{first}-{last}.csv"'})
