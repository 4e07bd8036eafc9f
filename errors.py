"""The JSON error envelope: every error, of any route, is `{"status": "error", "message": ...}`."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from store import DatabaseUnavailable

log = logging.getLogger("sms_bulk_app")


class ApiError(Exception):
    """An error answered as `{"status": "error", "message": ...}` with its HTTP status."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def too_large(limit: int) -> str:
    return f"the body is larger than {limit // 1024} KiB"


def read_body(limit: int) -> bytes:
    """The request body, or a 413 ApiError when it has more than `limit` bytes.

    What is read is counted, not what is declared: a chunked body (no Content-Length, as gunicorn
    passes it on when reached directly) would otherwise be cut silently at werkzeug's
    max_content_length. One byte more than the limit is read to tell "exactly the limit" from "more".
    """
    try:
        stream = get_input_stream(request.environ, max_content_length=limit + 1)
        body = bytearray()
        while len(body) <= limit and (chunk := stream.read(limit + 1 - len(body))):
            body += chunk
    except RequestEntityTooLarge:  # a Content-Length over the limit: nothing is read
        raise ApiError(413, too_large(limit))
    except (ParseException, OSError, ValueError) as error:  # a broken chunked body, a client gone
        raise ApiError(400, f"the body could not be read ({type(error).__name__})")
    if len(body) > limit:
        raise ApiError(413, too_large(limit))
    return bytes(body)


def error_response(status_code: int, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"status": "error", "message": message, **extra}), status_code


def register_error_handlers(app: Flask) -> None:
    """JSON for every error: ours, HTTP ones (404, 405, 413), the database's, and the unexpected."""

    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        if request.path == "/webhook" and "id" not in error.extra:  # refused before anything was kept
            log.info("Webhook refused with %d: %s", error.status_code, error.message)
        response, status = error_response(error.status_code, error.message, **error.extra)
        for name, value in error.headers.items():
            response.headers[name] = value
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code == 413:
            limit = request.max_content_length or app.config["MAX_CONTENT_LENGTH"]
            return error_response(413, too_large(limit))
        return error_response(error.code or 500, error.description or error.name)

    @app.errorhandler(DatabaseUnavailable)
    def database_unavailable(error: DatabaseUnavailable):
        log.error("Database unavailable: %s", error)
        return error_response(503, "the database is unavailable; try again later")

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("Unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal error; see the service log")
