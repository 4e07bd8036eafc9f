"""/api/v1: clients, mailings, statistics and manual sends, for integrators with an API key.

Every route is declared with `endpoint(...)`: its scope and its request and response schemas
(schemas.py). The declaration checks the key, validates the request, and is also what
/openapi.json is built from, so the document cannot drift from what the code does.
"""
from __future__ import annotations

import functools
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from flask_swagger_ui import get_swaggerui_blueprint
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from werkzeug.formparser import FormDataParser

import api_keys
import audit
import clients
import mailings
import templates
from bodies import InvalidJson, parse_json
from clients import NotText, field_path
from errors import ApiError, read_body
from mailings import MailingConflict
from models import ClientCreate, MailingCreate
from schemas import (
    Client,
    ClientPage,
    ClientQuery,
    ClientUpdate,
    Error,
    ImportReport,
    Mailing,
    MailingCreated,
    MailingList,
    MailingStats,
    MailingStatsList,
    MailingUpdate,
    Message,
    MessageCreate,
    MessagePage,
    MessageQuery,
    Queued,
)
from store import MAX_ID, ClientConflict

MAX_IMPORT_BYTES = 10 * 1024 * 1024

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@dataclass
class Endpoint:
    method: str
    path: str
    summary: str
    scope: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    responses: dict[int, tuple[type[BaseModel] | None, str]]
    body_content: str = "application/json"
    response_content: dict[int, str] = field(default_factory=dict)


ENDPOINTS: list[Endpoint] = []
COMMON_ERRORS = {400: "Invalid request: `errors` says what, field by field", 401: "No valid API key",
                 403: "The key lacks the scope", 429: "The key's daily quota is used up: see Retry-After",
                 503: "The database is unavailable"}


def _services():
    return current_app.extensions["sms_bulk_app"]


def endpoint(method: str, path: str, *, summary: str, scope: str, responses: dict[int, Any],
             body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
             body_content: str = "application/json", response_content: dict[int, str] | None = None,
             max_body: int | None = None) -> Callable:
    """Declare a route: the key must have `scope` (the view finds it in flask.g.api_key); `body` (at
    most `max_body` bytes, else the app's MAX_CONTENT_LENGTH) and `query` are validated and passed in."""

    def declare(view: Callable) -> Callable:
        described = {code: spec if isinstance(spec, tuple) else (spec, "") for code, spec in responses.items()}
        ENDPOINTS.append(Endpoint(method, path, summary, scope, body, query, described, body_content,
                                  response_content or {}))

        @functools.wraps(view)
        def handle(**path_args: Any):
            key = g.api_key = _authorize(scope)
            arguments = dict(path_args)
            if query is not None:
                arguments["query"] = _validated(query, request.args.to_dict())
            if body is not None:
                arguments["body"] = _validated(body, _json_body(max_body))
            _count_request(key)
            return view(**arguments)

        bp.add_url_rule(re.sub(r"\{(\w+)\}", rf"<int(min=1, max={MAX_ID}):\1>", path), endpoint=view.__name__,
                        view_func=handle, methods=[method])
        return handle

    return declare


def _authorize(scope: str) -> api_keys.ApiKey:
    """The request's key, if it is known and has `scope` (401, 403 otherwise)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise ApiError(401, "send an API key as Authorization: Bearer <key> (create one: sms_bulk_app.py keys create)",
                       headers={"WWW-Authenticate": "Bearer"})
    store = _services().store
    key = api_keys.find(store, header[7:].strip())
    if key is None:
        raise ApiError(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    if scope not in key.scopes:
        raise ApiError(403, f"this key lacks the scope {scope!r}")
    return key


def _count_request(key: api_keys.ApiKey) -> None:
    """Only a request that will be served counts against the key's daily quota: one refused
    (401, 403) or invalid (400, 413) does not."""
    retry_after = api_keys.count_request(_services().store, key.id)
    if retry_after is not None:
        raise ApiError(429, "this key's daily quota is used up", headers={"Retry-After": str(int(retry_after))})


def _json_body(limit: int | None) -> Any:
    """The JSON body, at most `limit` or the app's MAX_CONTENT_LENGTH (64 KiB) read."""
    try:
        return parse_json(read_body(limit or current_app.config["MAX_CONTENT_LENGTH"]) or b"null")
    except InvalidJson as error:
        raise ApiError(400, str(error))


def _validation_context() -> dict[str, Any]:
    """What the schemas check against: the region of numbers without a country code, and the
    longest text (in SMS parts) every provider takes."""
    services = _services()
    return {"region": services.config.default_region, "max_segments": services.dispatcher.max_segments}


def _validated(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data, context=_validation_context())
    except ValidationError as error:
        raise ApiError(400, "invalid request", errors=_errors(error))


def _errors(error: ValidationError) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in error.errors():
        found.setdefault(field_path(item), item["msg"].removeprefix("Value error, "))
    return found


def _answer(model: type[BaseModel], data: Any, status: int = 200) -> tuple[Response, int]:
    """Responses go through their schema too: what the document promises is what is sent."""
    return jsonify(model.model_validate(data).model_dump(mode="json", by_alias=True)), status


def _found(value: Any, what: str, ident: int) -> Any:
    """`value`, or a 404 naming what was not found (None, or False from a delete)."""
    if value is None or value is False:
        raise ApiError(404, f"no {what} {ident}")
    return value


# --- clients ---

@endpoint("POST", "/clients", summary="Create a client", scope="clients:write", body=ClientCreate,
          responses={201: Client, 409: (Error, "Another client has this phone or MoyKlass user")})
def create_client(body: ClientCreate):
    try:
        created = clients.create(_services().store, body, _services().config.default_timezone)
    except ClientConflict as error:
        raise ApiError(409, str(error))
    audit.record(_services().store, "client.create", "client", created["id"])
    return _answer(Client, created, 201)


@endpoint("GET", "/clients", summary="List clients (filter by tag, operator code, phone)", scope="read",
          query=ClientQuery, responses={200: ClientPage})
def list_clients(query: ClientQuery):
    items, total = clients.search(_services().store, query.tag, query.operator_code, query.phone, query.limit,
                                  query.offset, _services().config.default_region)
    return _answer(ClientPage, {"items": items, "total": total, "limit": query.limit, "offset": query.offset})


@endpoint("GET", "/clients/{client_id}", summary="Read a client", scope="read", responses={200: Client, 404: Error})
def get_client(client_id: int):
    return _answer(Client, _found(clients.get(_services().store, client_id), "client", client_id))


@endpoint("PATCH", "/clients/{client_id}", summary="Change a client's fields", scope="clients:write",
          body=ClientUpdate, responses={200: Client, 404: Error, 409: Error})
def update_client(client_id: int, body: ClientUpdate):
    try:
        changed = clients.update(_services().store, client_id, body.model_dump(exclude_unset=True))
    except ClientConflict as error:
        raise ApiError(409, str(error))
    audit.record(_services().store, "client.update", "client", _found(changed, "client", client_id)["id"],
                 "fields: " + ", ".join(sorted(body.model_fields_set)))
    return _answer(Client, changed)


@endpoint("DELETE", "/clients/{client_id}", summary="Delete a client", scope="clients:write",
          responses={204: (None, "Deleted"), 404: Error})
def delete_client(client_id: int):
    _found(clients.delete(_services().store, client_id), "client", client_id)
    audit.record(_services().store, "client.delete", "client", client_id)
    return "", 204


@endpoint("POST", "/clients/import", summary="Import clients from CSV (phone, name, tags, timezone, moyklass_user_id)",
          scope="clients:write", body_content="text/csv", responses={200: ImportReport, 413: Error})
def import_clients():
    raw = read_body(MAX_IMPORT_BYTES)
    if request.mimetype == "multipart/form-data":
        _, _, files = FormDataParser().parse(io.BytesIO(raw), request.mimetype, len(raw), request.mimetype_params)
        if "file" not in files:
            raise ApiError(400, "a multipart upload needs the CSV in the field `file`")
        raw = files["file"].read()
    config = _services().config
    try:
        report = clients.import_csv(_services().store, raw, config.default_timezone, config.default_region)
    except NotText as error:
        raise ApiError(400, str(error))
    audit.record(_services().store, "client.import", "client", None,
                 f"{report['created']} created, {report['updated']} updated, {len(report['rejected'])} rejected")
    return _answer(ImportReport, report)


# --- mailings ---

@endpoint("POST", "/mailings", summary="Create a mailing; the answer estimates its SMS parts and cost",
          scope="mailings:write", body=MailingCreate, responses={201: MailingCreated})
def create_mailing(body: MailingCreate):
    store = _services().store
    body = templates.with_mailing_text(store, body)
    created = mailings.create(store, body)
    audit.record(store, "mailing.create", "mailing", created["id"])
    return _answer(MailingCreated, created | {"estimate": mailings.estimate(store, body, _services().config)}, 201)


@endpoint("GET", "/mailings", summary="List mailings", scope="read", responses={200: MailingList})
def list_mailings():
    return _answer(MailingList, {"items": mailings.list_all(_services().store)})


@endpoint("GET", "/mailings/stats", summary="Every mailing with its messages counted by status", scope="read",
          responses={200: MailingStatsList})
def all_mailing_stats():
    return _answer(MailingStatsList, {"items": mailings.stats_all(_services().store)})


@endpoint("GET", "/mailings/{mailing_id}", summary="Read a mailing", scope="read",
          responses={200: Mailing, 404: Error})
def get_mailing(mailing_id: int):
    return _answer(Mailing, _found(mailings.get(_services().store, mailing_id), "mailing", mailing_id))


@endpoint("PATCH", "/mailings/{mailing_id}", summary="Change a mailing that has not started", scope="mailings:write",
          body=MailingUpdate, responses={200: Mailing, 404: Error, 409: (Error, "The mailing has started")})
def update_mailing(mailing_id: int, body: MailingUpdate):
    changes = body.model_dump(exclude_unset=True, by_alias=True)
    try:
        changed = mailings.update(_services().store, mailing_id, changes, _validation_context())
    except MailingConflict as error:
        raise ApiError(409, str(error))
    except ValidationError as error:
        raise ApiError(400, "invalid request", errors=_errors(error))
    _found(changed, "mailing", mailing_id)
    audit.record(_services().store, "mailing.update", "mailing", mailing_id, "fields: " + ", ".join(sorted(changes)))
    return _answer(Mailing, changed)


@endpoint("DELETE", "/mailings/{mailing_id}", summary="Delete a mailing that has not started",
          scope="mailings:write", responses={204: (None, "Deleted"), 404: Error, 409: (Error, "It has started")})
def delete_mailing(mailing_id: int):
    try:
        _found(mailings.delete(_services().store, mailing_id), "mailing", mailing_id)
    except MailingConflict as error:
        raise ApiError(409, str(error))
    audit.record(_services().store, "mailing.delete", "mailing", mailing_id)
    return "", 204


@endpoint("POST", "/mailings/{mailing_id}/cancel", summary="Cancel a mailing: what is still queued is not sent",
          scope="mailings:write", responses={200: Mailing, 404: Error, 409: (Error, "It has finished")})
def cancel_mailing(mailing_id: int):
    try:
        mailing, canceled = mailings.cancel(_services().store, mailing_id)
    except MailingConflict as error:
        raise ApiError(409, str(error))
    _found(mailing, "mailing", mailing_id)
    if canceled:
        audit.record(_services().store, "mailing.cancel", "mailing", mailing_id)
    return _answer(Mailing, mailing)


@endpoint("POST", "/mailings/{mailing_id}/retry-failed", summary="Queue the mailing's FAILED and UNDELIVERED again",
          scope="mailings:write", responses={200: MailingStats, 404: Error, 409: (Error, "Not running")})
def retry_mailing(mailing_id: int):
    store = _services().store
    _found(mailings.get(store, mailing_id), "mailing", mailing_id)
    try:
        queued = mailings.retry_failed(store, mailing_id, time.time())
    except MailingConflict as error:
        raise ApiError(409, str(error))
    audit.record(store, "mailing.retry", "mailing", mailing_id, f"{queued} queued again")
    return _answer(MailingStats, mailings.stats(store, mailing_id))


@endpoint("GET", "/mailings/{mailing_id}/stats", summary="A mailing's messages by status, progress, parts sent, cost",
          scope="read", responses={200: MailingStats, 404: Error})
def mailing_stats(mailing_id: int):
    return _answer(MailingStats, _found(mailings.stats(_services().store, mailing_id), "mailing", mailing_id))


@endpoint("GET", "/mailings/{mailing_id}/messages", summary="A mailing's messages, optionally of one status",
          scope="read", query=MessageQuery, responses={200: MessagePage, 404: Error})
def mailing_messages(mailing_id: int, query: MessageQuery):
    store = _services().store
    _found(mailings.get(store, mailing_id), "mailing", mailing_id)
    items, total = mailings.messages(store, mailing_id, query.status, query.limit, query.offset)
    return _answer(MessagePage, {"items": items, "total": total, "limit": query.limit, "offset": query.offset})


@endpoint("GET", "/mailings/{mailing_id}/messages.csv", summary="A mailing's messages as CSV, streamed",
          scope="read", query=MessageQuery, responses={200: (None, "CSV, one message a row"), 404: Error},
          response_content={200: "text/csv"})
def mailing_messages_csv(mailing_id: int, query: MessageQuery):
    store = _services().store
    _found(mailings.get(store, mailing_id), "mailing", mailing_id)
    rows = stream_with_context(mailings.messages_csv(store, mailing_id, query.status))
    return Response(rows, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="mailing-{mailing_id}-messages.csv"'})


# --- single messages ---

@endpoint("POST", "/messages", summary="Send one SMS, to a phone or to a MoyKlass user, through the outbox",
          scope="messages:send", body=MessageCreate,
          responses={202: Queued, 503: (Error, "MoyKlass is not configured (for moyklass_user_id)")})
def send_message(body: MessageCreate):
    services = _services()
    if body.moyklass_user_id is not None and services.dispatcher.moyklass is None:
        raise ApiError(503, "MoyKlass is not configured: set API_KEY")
    refused_because = None if body.text or body.template else services.config.cannot_queue_by_hand(body.event)
    if refused_because:
        raise ApiError(400, refused_because)
    text = body.text if body.template is None else templates.message_text(
        services.store, body.template, body.variables, _validation_context()["max_segments"])
    message_id = services.store.enqueue("api", services.config.sms_valid_seconds, phone=body.phone,
                                        text=text, user_id=body.moyklass_user_id, event=body.event)
    audit.record(services.store, "message.send", "message", message_id, f"template {body.template}" if body.template
                 else f"event {body.event}" if body.event else "")
    return _answer(Queued, {"id": message_id}, 202)


@endpoint("GET", "/messages/{message_id}", summary="Read a message and its status", scope="read",
          responses={200: Message, 404: Error})
def get_message(message_id: int):
    return _answer(Message, _found(mailings.message(_services().store, message_id), "message", message_id))


# --- the document ---

@functools.cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for /api/v1, from the same schemas that validate the requests and responses.

    Built once: the routes and their schemas are all declared when this module is imported.
    """
    models = {(e.body, "validation") for e in ENDPOINTS if e.body} | {(Error, "serialization")}
    models |= {(model, "serialization") for e in ENDPOINTS for model, _ in e.responses.values() if model}
    refs, definitions = models_json_schema(sorted(models, key=lambda m: (m[0].__name__, m[1])),
                                           ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        responses = {str(code): {"description": COMMON_ERRORS.get(code, "")}
                     for code in COMMON_ERRORS}
        for code, (model, description) in e.responses.items():
            answer: dict[str, Any] = {"description": description or ("OK" if code < 300 else "Error")}
            media = e.response_content.get(code, "application/json")
            if model is not None:
                answer["content"] = {media: {"schema": refs[(model, "serialization")]}}
            elif media != "application/json":
                answer["content"] = {media: {"schema": {"type": "string"}}}
            responses[str(code)] = answer
        for code in COMMON_ERRORS:
            responses[str(code)]["content"] = {"application/json": {"schema": refs[(Error, "serialization")]}}
        operation: dict[str, Any] = {"summary": e.summary, "operationId": f"{e.method.lower()}_{e.path}",
                                     "security": [{"bearer": []}], "responses": responses,
                                     "description": f"Scope: `{e.scope}`."}
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}
                      for name in re.findall(r"\{(\w+)\}", e.path)]
        if e.query is not None:
            properties = e.query.model_json_schema()["properties"]
            for name, info in e.query.model_fields.items():
                parameters.append({"name": name, "in": "query", "required": info.is_required(),
                                   "schema": properties[name],
                                   **({"description": info.description} if info.description else {})})
        if parameters:
            operation["parameters"] = parameters
        if e.body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": refs[(e.body, "validation")]}}}
        elif e.body_content == "text/csv":
            operation["requestBody"] = {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
        paths.setdefault(f"/api/v1{e.path}", {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "SMSBulkApp API", "version": "1",
                 "description": "Clients, bulk mailings, statistics and single SMS. Every call needs an API key: "
                                "`python sms_bulk_app.py keys create --name NAME --scopes read,...`."},
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def openapi() -> Response:
    return jsonify(openapi_document())


def docs_blueprint() -> Blueprint:
    """Swagger UI at /docs/, from the files flask-swagger-ui ships (no CDN: these hosts have no internet)."""
    # validatorUrl None: no validator badge, which Swagger UI would otherwise load from validator.swagger.io.
    return get_swaggerui_blueprint("/docs", "/openapi.json",
                                   config={"app_name": "SMSBulkApp API", "validatorUrl": None})
