"""Fake SMS Aero, probe and generic HTTP gateways: real HTTP servers on 127.0.0.1.

The facts they are held to (from SMS Aero's official client, smsaero/smsaero_python, and the
probe server's OpenAPI description and its clients), copied here so that tests need nothing else:

SMS Aero v2: every call a POST of a JSON body to `<gate>/v2/<selector>` with HTTP Basic
`email:api_key`. `sms/send` takes `number` (or `numbers`), `text` (2-640 characters), `sign`;
`sms/status` takes `id`. Answers: `{"success": bool, "data": ..., "message": str}`, send and status
data `{id, from, number, text, status, extendStatus, channel, cost, dateCreate, dateSend}`; status
0 queue, 1 delivered, 2 not delivered, 3 sent, 4 waiting, 6 rejected, 8 moderation. An empty balance
is `{"result": "no credits"}`, a refused text `{"result": "reject", "reason": ...}`. Not documented,
so chosen here: bad credentials answer HTTP 401 with the envelope, a bad request 400 with it.

probe: `POST /v1/send/{msgId}` with `Authorization: Bearer <JWT>` and `{"id": int64, "phone": int64,
"text": str}` -> 200 `{"code": 0, "message": "OK"}`. Not documented, so chosen here: a bad token
gets 401, a body that is not that shape 400.

`python -m tests.fake_gateways smsaero --port 8083 [--journal FILE]` runs the SMS Aero fake on its own
(benchmarks run `serve` as a process); the journal gets each accepted SMS as a JSON line before the
answer leaves, so it survives the process being killed.
"""
from __future__ import annotations

import argparse
import base64
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from tests.fakes import interruptible, serve_in_background, stop_serving, wait_for_interrupt

# (status, body: a JSON value or raw bytes)
Answer = tuple[int, Any]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real gateways do

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without NODELAY, Nagle holds the body back.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        fake: FakeGateway = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query, keep_blank_values=True),
                   "headers": dict(self.headers), "body": raw}
        status, answer = fake.answer(request)
        with fake.lock:
            fake.received.append(request | {"status": status})
        data = answer if isinstance(answer, bytes) else json.dumps(answer, ensure_ascii=False).encode()
        self.send_response(status)
        kind = "text/html" if isinstance(answer, bytes) else "application/json; charset=utf-8"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a test of timeouts)

    do_GET = do_POST = do_PUT = _handle


class FakeGateway:
    """A gateway in a background thread: start(), url(path), stop(); every request in `received`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # HTTP statuses to answer the next requests with, an HTML page
        self.latency = 0.0  # seconds before each answer
        self._server: _Server | None = None

    def start(self, port: int = 0) -> FakeGateway:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        serve_in_background(self._server)
        return self

    def stop(self) -> None:
        if self._server:
            stop_serving(self._server)
            self._server = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def answer(self, request: dict[str, Any]) -> Answer:
        time.sleep(self.latency)
        with self.lock:
            if self.fail_next:
                return self.fail_next.pop(0), b"<html>Error</html>"
        return self.route(request)

    def route(self, request: dict[str, Any]) -> Answer:
        raise NotImplementedError


def closed_url(path: str = "") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def json_body(request: dict[str, Any]) -> Any:
    try:
        return json.loads(request["body"])
    except ValueError:
        return None


class FakeSmsAero(FakeGateway):
    """SMS Aero v2 under /v2: sms/send, sms/status, balance."""

    EXTEND_STATUS = {0: "queue", 1: "delivery", 2: "no delivery", 3: "transmitted", 4: "waiting", 6: "reject",
                     8: "moderation"}

    def __init__(self, email: str = "school@example.ru", api_key: str = "aero-key-0123456789abcdef") -> None:
        super().__init__()
        self.email = email
        self.api_key = api_key
        self.balance = 100.0  # 0: every send answers "no credits"
        self.reject_reason: str | None = None  # set: every send answers "reject" with it
        self.report_status = 1  # the status sms/status gives a sent message not in `statuses`
        self.statuses: dict[int, int] = {}
        self.messages: list[dict[str, Any]] = []  # every SMS accepted: the sms/send data
        self.journal: TextIO | None = None  # also written there, a JSON line each (with `at`, monotonic)
        self._ids = itertools.count(41000)

    @property
    def api_url(self) -> str:
        return self.url("/v2")

    def route(self, request: dict[str, Any]) -> Answer:
        expected = "Basic " + base64.b64encode(f"{self.email}:{self.api_key}".encode()).decode()
        selector = request["path"].removeprefix("/v2/")
        if request["method"] != "POST" or selector not in ("sms/send", "sms/status", "balance"):
            return 404, {"success": False, "data": None, "message": "Not found"}
        if request["headers"].get("Authorization") != expected:
            return 401, {"success": False, "data": None, "message": "Your request was made with invalid credentials."}
        body = json_body(request)
        if not isinstance(body, dict):
            return 400, {"success": False, "data": None, "message": "The body must be a JSON object"}
        with self.lock:
            if selector == "balance":
                return 200, {"success": True, "data": {"balance": self.balance}, "message": None}
            if selector == "sms/status":
                return self._status(body)
            return self._send(body)

    def _send(self, body: dict[str, Any]) -> Answer:
        number, text, sign = body.get("number"), body.get("text"), body.get("sign")
        problems = []
        if not isinstance(number, int) or not re.fullmatch(r"[1-9]\d{9,14}", str(number)):
            problems.append("number: invalid number")
        if not isinstance(text, str) or not 2 <= len(text) <= 640:
            problems.append("text: from 2 to 640 characters")
        if not isinstance(sign, str) or not sign:
            problems.append("sign: required")
        if problems:
            return 400, {"success": False, "data": None, "message": "; ".join(problems)}
        if self.balance <= 0:
            return 200, {"result": "no credits"}
        if self.reject_reason:
            return 200, {"result": "reject", "reason": self.reject_reason}
        now = int(time.time())
        data = {"id": next(self._ids), "from": sign, "number": str(number), "text": text, "status": 0,
                "extendStatus": "queue", "channel": "FREE SIGN", "cost": 5.49, "dateCreate": now, "dateSend": now}
        self.messages.append(data)
        if self.journal:
            self.journal.write(json.dumps(data | {"at": time.monotonic()}, ensure_ascii=False) + "\n")
            self.journal.flush()
        return 200, {"success": True, "data": data, "message": None}

    def _status(self, body: dict[str, Any]) -> Answer:
        sent = {message["id"]: message for message in self.messages}
        if body.get("id") not in sent:
            return 200, {"success": False, "data": None, "message": "Message not found"}
        status = self.statuses.get(body["id"], self.report_status)
        data = sent[body["id"]] | {"status": status, "extendStatus": self.EXTEND_STATUS[status],
                                   "dateAnswer": int(time.time())}
        return 200, {"success": True, "data": data, "message": None}


class FakeProbe(FakeGateway):
    """The probe API under /v1: POST /v1/send/{msgId}."""

    SEND_PATH = re.compile(r"^/v1/send/(\d+)$")

    def __init__(self, token: str = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJmYWJyaXF1ZSJ9.c2lnbmF0dXJl") -> None:
        super().__init__()
        self.token = token
        self.messages: list[dict[str, Any]] = []

    @property
    def api_url(self) -> str:
        return self.url("/v1")

    def route(self, request: dict[str, Any]) -> Answer:
        match = self.SEND_PATH.match(request["path"])
        if request["method"] != "POST" or not match:
            return 404, {"code": 404, "message": "Not Found"}
        if request["headers"].get("Authorization") != f"Bearer {self.token}":
            return 401, b"Unauthorized"
        body = json_body(request)
        shape = {"id": int, "phone": int, "text": str}
        if not isinstance(body, dict) or set(body) != set(shape) \
                or not all(isinstance(body[k], t) and not isinstance(body[k], bool) for k, t in shape.items()) \
                or body["id"] != int(match.group(1)):
            return 400, {"code": 400, "message": "Invalid input"}
        with self.lock:
            self.messages.append(body)
        return 200, {"code": 0, "message": "OK"}


class FakeLocalGateway(FakeGateway):
    """A school's own gateway, whatever its shape: `respond(request)` gives each answer
    (by default 200 `{"status": 0, "message_id": "gw-N"}`); `api_key`, if set, must come in
    the X-Api-Key header, else 401 `{"status": -10, "error": "bad key"}`."""

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self._ids = itertools.count(1)
        self.respond: Callable[[dict[str, Any]], Answer] = lambda request: (
            200, {"status": 0, "message_id": f"gw-{next(self._ids)}"})

    def route(self, request: dict[str, Any]) -> Answer:
        if self.api_key is not None and request["headers"].get("X-Api-Key") != self.api_key:
            return 401, {"status": -10, "error": "bad key"}
        return self.respond(request)


def serve(port: int, journal: str | None = None) -> None:
    """Run the SMS Aero fake on `port` in the foreground until interrupted (a process of its own
    for benchmarks), each accepted SMS appended to the file `journal` if given."""
    interruptible()
    fake = FakeSmsAero()
    if journal:
        fake.journal = open(journal, "a", encoding="utf-8")
    fake.start(port)
    wait_for_interrupt()
    fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.fake_gateways", description="Run the fake SMS Aero")
    parser.add_argument("service", choices=["smsaero"])
    parser.add_argument("--port", type=int, default=8083, help="default 8083")
    parser.add_argument("--journal", help="append each accepted SMS to this file, a JSON line each")
    args = parser.parse_args()
    print(f"fake SMS Aero on http://127.0.0.1:{args.port}/v2 (school@example.ru / aero-key-0123456789abcdef)",
          flush=True)
    serve(args.port, args.journal)
