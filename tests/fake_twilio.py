"""A fake Twilio (Messages, 2010-04-01): a real HTTP server on 127.0.0.1, held to Twilio's spec.

Every request is checked against the subset of Twilio's published OpenAPI spec in
tests/fixtures/twilio-messages-subset.json (`request_problems`) and kept in `received` with what
was wrong with it; one that does not conform is answered 400 as Twilio would. It can also call
the service back: `post_status` POSTs a status callback signed as Twilio signs them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import requests

from tests.fakes import serve_in_background, stop_serving
from tests.openapi_subset import SpecSubset

SUBSET = SpecSubset(Path(__file__).parent / "fixtures" / "twilio-messages-subset.json", "Twilio")
SPEC = SUBSET.document
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"
FROM = "+15005550006"
E164 = re.compile(r"^\+[1-9]\d{7,14}$")
# Twilio's magic test numbers answer these errors; any other valid number is accepted.
ERRORS = {
    "+15005550001": (400, 21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550009": (400, 21614, "'To' number +15005550009 is not a valid mobile number"),
    "+15005550004": (400, 21610, "Attempt to send to unsubscribed recipient"),
}


def value_problems(schema: dict[str, Any], text: str) -> list[str]:
    """Whether one form or path value is of the schema's type, length, pattern and format."""
    schema = SUBSET.resolve(schema)
    kind = schema.get("type")
    if kind == "integer":
        return [] if re.fullmatch(r"-?\d+", text) else [f"{text!r} is not an integer"]
    if kind == "number":
        return [] if re.fullmatch(r"-?\d+(\.\d+)?", text) else [f"{text!r} is not a number"]
    if kind == "boolean":
        return [] if text in ("true", "false") else [f"{text!r} is not true or false"]
    if kind != "string":
        return [f"the fake cannot check a value of {schema}"]
    problems = [f"{text!r} is not one of {schema['enum']}"] if text not in schema.get("enum", [text]) else []
    if not schema.get("minLength", 0) <= len(text) <= schema.get("maxLength", len(text)):
        problems.append(f"{text!r} has the wrong length")
    if "pattern" in schema and not re.search(schema["pattern"], text):
        problems.append(f"{text!r} does not match {schema['pattern']}")
    if schema.get("format") == "uri" and not re.match(r"^https?://[^/\s]+", text):
        problems.append(f"{text!r} is not a URI")
    return problems


def request_problems(request: dict[str, Any]) -> list[str]:
    """Everything in one request (method, path, headers, raw body) that Twilio's spec does not allow."""
    try:
        operation, path_values = SUBSET.operation_for(request["method"], request["path"])
    except LookupError as error:
        return [str(error)]
    parameters = {(p["in"], p["name"]): p for p in map(SUBSET.resolve, operation.get("parameters", []))}
    problems = [f"path {name}: {problem}" for name, value in path_values.items()
                for problem in value_problems(parameters[("path", name)]["schema"], unquote(value))]
    headers = {name.lower(): value for name, value in request["headers"].items()}
    for requirement in operation.get("security", SPEC["security"]):
        for scheme in map(SPEC["components"]["securitySchemes"].get, requirement):
            if scheme["scheme"] == "basic" and not headers.get("authorization", "").startswith("Basic "):
                problems.append("no HTTP Basic credentials")
    body = operation.get("requestBody")
    if body is None:
        return problems + (["a body where the operation takes none"] if request["body"] else [])
    if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return problems + ["the body is not sent as application/x-www-form-urlencoded"]
    schema = SUBSET.resolve(body["content"]["application/x-www-form-urlencoded"]["schema"])
    try:
        fields = parse_qsl(request["body"].decode(), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return problems + ["the body is not form fields"]
    given: dict[str, list[str]] = {}
    for name, value in fields:
        given.setdefault(name, []).append(value)
    for name, values in given.items():
        declared = schema["properties"].get(name)
        if declared is None:
            problems.append(f"field {name} is not a parameter of this operation")
            continue
        declared = SUBSET.resolve(declared)
        if declared.get("type") != "array" and len(values) > 1:
            problems.append(f"field {name} given more than once")
        item_schema = declared["items"] if declared.get("type") == "array" else declared
        problems += [f"field {name}: {p}" for value in values for p in value_problems(item_schema, value)]
    return problems + [f"required field {name} is missing" for name in schema.get("required", [])
                       if name not in given]


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's error answer."""
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature as Twilio computes it (written here apart from the service's validator)."""
    data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, answer = self.server.fake.answer(self.command, self.path, dict(self.headers), body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle


class FakeTwilio:
    """Messages.json (create) and Messages/{sid}.json (fetch) of one account, with Twilio's answers:
    201 and a queued Message, or `{code, message, more_info, status}`. `fail_next` forces the
    next answers' HTTP statuses (500, 429, ...)."""

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.lock = threading.Lock()
        # Every request: {"method", "path", "headers", "body" (raw), "problems", "status"}.
        self.received: list[dict[str, Any]] = []
        self.messages: dict[str, dict[str, Any]] = {}  # sid -> the Message, with the fields it was created from
        self.fail_next: list[int] = []
        # A status to call back with before answering the create: Twilio's callback can come before
        # the sender has even read the answer. The callbacks' HTTP statuses are kept in `callbacks`.
        self.callback_first: str | None = None
        self.callbacks: list[int] = []
        self._sids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> FakeTwilio:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        serve_in_background(self._server)
        return self

    def stop(self) -> None:
        if self._server:
            stop_serving(self._server)
            self._server = None

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        request = {"method": method, "path": path, "headers": headers, "body": body,
                   "problems": request_problems({"method": method, "path": path, "headers": headers, "body": body})}
        with self.lock:
            status, answer = self._route(request)
            self.received.append(request | {"status": status})
        if status == 201 and self.callback_first:
            self.post_status(answer["sid"], self.callback_first)
        return status, answer

    def _route(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.fail_next:
            status = self.fail_next.pop(0)
            return status, twilio_error(status, 20429 if status == 429 else 20500, "forced failure")
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if not hmac.compare_digest(request["headers"].get("Authorization", ""), expected):
            return 401, twilio_error(401, 20003, "Authenticate")
        try:
            operation, values = SUBSET.operation_for(request["method"], request["path"])
        except LookupError:
            return 404, twilio_error(404, 20404, "The requested resource was not found")
        if values["AccountSid"] != self.account_sid:
            return 401, twilio_error(401, 20003, "Authenticate")
        if request["problems"]:
            return 400, twilio_error(400, 21601, "; ".join(request["problems"]))
        if operation["operationId"] == "FetchMessage":
            message = self.messages.get(values["Sid"])
            return (200, self._public(message)) if message else (404, twilio_error(404, 20404, "Not found"))
        fields = dict(parse_qsl(request["body"].decode(), keep_blank_values=True))
        if fields["To"] in ERRORS or not E164.match(fields["To"]):
            status, code, text = ERRORS.get(fields["To"], (400, 21211, f"The 'To' number {fields['To']} is not"
                                                                        " a valid phone number."))
            return status, twilio_error(status, code, text)
        sid = "SM" + hashlib.md5(str(next(self._sids)).encode()).hexdigest()  # 32 hex digits, as Twilio's
        self.messages[sid] = {
            "sid": sid, "account_sid": self.account_sid, "api_version": "2010-04-01", "body": fields.get("Body"),
            "to": fields["To"], "from": fields.get("From"), "messaging_service_sid": fields.get("MessagingServiceSid"),
            "status": "queued", "direction": "outbound-api", "error_code": None, "error_message": None,
            "num_segments": "1", "num_media": "0", "price": None, "price_unit": "USD",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json", "fields": fields,
        }
        return 201, self._public(self.messages[sid])

    @staticmethod
    def _public(message: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in message.items() if name != "fields"}

    def set_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        """What a later fetch of the message answers."""
        with self.lock:
            self.messages[sid] |= {"status": status, "error_code": error_code}

    def post_status(self, sid: str, status: str, error_code: int | None = None,
                    url: str | None = None) -> requests.Response:
        """The status callback Twilio would POST to the message's StatusCallback (or `url`), signed."""
        self.set_status(sid, status, error_code)
        message = self.messages[sid]
        params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": self.account_sid, "MessageStatus": status,
                  "SmsStatus": status, "To": message["to"], "ApiVersion": "2010-04-01"}
        if message["from"]:
            params["From"] = message["from"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        target = url or message["fields"]["StatusCallback"]
        response = requests.post(target, data=urlencode(params), timeout=5, headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(self.auth_token, target, params)})
        self.callbacks.append(response.status_code)
        return response
