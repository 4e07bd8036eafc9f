"""Fake MoyKlass and OneClick: real HTTP servers on 127.0.0.1, faithful to external-apis.md.

Used by the tests and the benchmarks; `python -m tests.fakes` runs both for trying the
service by hand with curl (MoyKlass on 8081, OneClick on 8082), and shows what they received:
GET /_fake/messages and /_fake/stats on OneClick, GET /_fake/stats on MoyKlass.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

Handler = Callable[["_RequestHandler", dict[str, Any] | None], tuple[int, Any]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real services do

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without NODELAY, Nagle holds the body back.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake.count_connection(self.connection)

    def finish(self) -> None:
        super().finish()
        self.server.fake.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a fake is quiet; tests read its recorded state instead

    def _handle(self) -> None:
        fake: FakeService = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        inspect = fake.inspection().get(self.path) if self.command == "GET" else None
        if inspect:
            status, answer = 200, inspect()
        else:
            if fake.latency:
                time.sleep(fake.latency)
            status, answer = fake.route(self, body)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in fake.extra_headers(status).items():
            self.send_header(name, value)
        self.end_headers()
        if fake.trickle_seconds:  # a byte at a time, each well inside any per-read timeout
            for byte in data:
                time.sleep(fake.trickle_seconds)
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        else:
            self.wfile.write(data)

    do_GET = do_POST = _handle


# How often a fake's server loop looks for stop(): every test stops two fakes or more, and at
# 0.05 s that was a minute of the suite's time.
SERVE_POLL_SECONDS = 0.01


def serve_in_background(server: socketserver.BaseServer) -> None:
    threading.Thread(target=server.serve_forever, args=(SERVE_POLL_SECONDS,), daemon=True).start()


def stop_serving(server: socketserver.BaseServer) -> None:
    server.shutdown()
    server.server_close()


class FakeService:
    """A fake HTTP service in a background thread: start(), .url, stop()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency = 0.0
        self.trickle_seconds = 0.0  # pause before each byte of an answer's body
        self.connections = 0
        self.open_sockets: set[socket.socket] = set()
        self._server: _Server | None = None

    def count_connection(self, connection: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            self.open_sockets.add(connection)

    def drop_connections(self) -> None:
        """Close every open client connection from the server's side, as an idle timeout would."""
        for connection in list(self.open_sockets):
            connection.shutdown(socket.SHUT_RDWR)

    def extra_headers(self, status: int) -> dict[str, str]:
        return {}

    def inspection(self) -> dict[str, Callable[[], Any]]:
        """GET paths (/_fake/...) that show a person trying the service what the fake received."""
        return {}

    def route(self, request: _RequestHandler, body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    def start(self, port: int = 0) -> FakeService:
        self._server = _Server(("127.0.0.1", port), _RequestHandler)
        self._server.fake = self
        serve_in_background(self._server)
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server:
            stop_serving(self._server)
            self._server = None


def moyklass_user(user_id: int, phone: str | None, name: str = "Marko Petrović", state: int = 1) -> dict[str, Any]:
    """A User object shaped like MoyKlass' GET /v1/company/users/{userId} answer."""
    return {
        "id": user_id,
        "name": name,
        "email": f"user{user_id}@example.rs",
        "phone": phone,
        "clientStateId": state,
        "filials": [1],
        "tags": [{"id": 3, "name": "Robotika"}],
        "attributes": [],
        "createdAt": "2025-09-01T10:00:00+03:00",
        "balans": 2400,
    }


def moyklass_lesson(lesson_id: int, date: str, begin_time: str, topic: str | None = None,
                    records: Iterable[dict[str, Any]] = (), **fields: Any) -> dict[str, Any]:
    """A Lesson shaped like MoyKlass' GET /v1/company/lessons/{lessonId}?includeRecords=true answer,
    45 minutes long; each of `records` (a LessonRecord: userId, and visit, free, test, skip... which
    default to the spec's defaults) gets an id and the lesson's id. `fields` override the rest."""
    end = int(begin_time[:2]) * 60 + int(begin_time[3:5]) + 45
    lesson = {
        "id": lesson_id, "date": date, "beginTime": begin_time, "endTime": f"{end // 60 % 24:02d}:{end % 60:02d}",
        "createdAt": "2025-09-01T10:00:00.000Z", "filialId": 1, "roomId": 1, "classId": 1, "status": 0,
        "comment": None, "maxStudents": None, "topic": topic, "description": None, "teacherIds": [],
        "records": [{"id": lesson_id * 1000 + number, "lessonId": lesson_id, "visit": False, "free": False,
                     "goodReason": False, "test": False, "skip": False, "paid": True,
                     "createdAt": "2025-09-01T10:00:00.000Z", **record}
                    for number, record in enumerate(records, 1)],
    }
    return {**lesson, **fields}


def numbered_phone(user_id: int) -> str:
    """A valid Serbian mobile number, different for every user id below nine million."""
    return f"38164{1_000_000 + user_id:07d}"


class FakeMoyKlass(FakeService):
    """getToken; users/{id}, users (a page, or a batch by userIds) and lessons/{id} with x-access-token;
    401 on a bad token, 429 past 7 requests/s. Every request is kept in `received`."""

    RATE_LIMIT = 7
    USER_PATH = re.compile(r"^/v1/company/users/(\d+)$")
    LESSON_PATH = re.compile(r"^/v1/company/lessons/(\d+)$")

    def __init__(self, api_key: str = "test-api-key", enforce_rate_limit: bool = True,
                 expires_form: str = "z", numbered_users: int = 0) -> None:
        super().__init__()
        self.numbered_users = numbered_users  # users 1..N exist without being added, for load
        self.api_key = api_key
        self.enforce_rate_limit = enforce_rate_limit
        self.expires_form = expires_form  # "z": 2026-11-30T07:00:00.000Z, "offset": +03:00
        self.token_lifetime = timedelta(days=7)  # negative: tokens issued already expired (clock skew)
        self.users: dict[int, dict[str, Any]] = {}
        self.lessons: dict[int, dict[str, Any]] = {}
        self.lesson_calls = 0
        # Every request: {"method", "path", "query" (raw), "headers", "body", "status"}, for spec checks.
        self.received: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self.token_calls = 0
        self.user_calls = 0
        self.rate_limited = 0  # requests answered 429 for passing RATE_LIMIT
        self.request_times: deque[float] = deque()  # the last second, for the rate limit
        self.request_log: list[float] = []  # every request's time.monotonic()
        self.fail_next: list[int] = []  # HTTP statuses to answer the next requests with
        self.page_requests: list[tuple[int, int]] = []  # (offset, limit) of each users page asked for
        self._token_numbers = itertools.count(1)

    def add_user(self, user_id: int, phone: str | None, name: str = "Marko Petrović", state: int = 1,
                 phone_as_number: bool = False) -> None:
        """`phone_as_number`: the phone as a JSON number (79001234567), as the spec's own example has it."""
        self.users[user_id] = moyklass_user(user_id, phone, name, state)
        if phone_as_number and phone is not None:
            self.users[user_id]["phone"] = int(phone)

    def add_lesson(self, lesson_id: int, date: str, begin_time: str, topic: str | None = None,
                   records: Iterable[dict[str, Any]] = (), **fields: Any) -> None:
        """A lesson with its records, e.g. records=[{"userId": 5, "visit": True}] (see moyklass_lesson)."""
        self.lessons[lesson_id] = moyklass_lesson(lesson_id, date, begin_time, topic, records, **fields)

    def _user(self, user_id: int) -> dict[str, Any] | None:
        if user_id in self.users:
            return self.users[user_id]
        if user_id <= self.numbered_users:
            return moyklass_user(user_id, numbered_phone(user_id))
        return None

    def _user_page(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        """GET /v1/company/users: offset, limit (at most 500), clientStateId and userIds (comma lists)."""
        offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["100"])[0])
        if limit > 500:
            return 400, {"code": "ValidationError", "message": "limit must be at most 500"}
        if "userIds" in query:
            try:
                user_ids = _user_ids(query["userIds"])
            except ValueError as error:
                return 400, {"code": "RequestValidationError", "message": str(error)}
            users = [user for user in map(self._user, sorted(user_ids)) if user is not None]
        else:
            users = [self.users[user_id] for user_id in sorted(self.users)]
        if "clientStateId" in query:
            states = {int(s) for s in query["clientStateId"][0].split(",")}
            users = [user for user in users if user["clientStateId"] in states]
        self.page_requests.append((offset, limit))
        return 200, {"users": users[offset:offset + limit], "stats": {"totalItems": len(users)}}

    def revoke_all_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def extra_headers(self, status: int) -> dict[str, str]:
        return {"Retry-After": "1"} if status == 429 else {}

    def inspection(self) -> dict[str, Callable[[], Any]]:
        return {"/_fake/stats": self._stats}

    def _stats(self) -> dict[str, int]:
        with self.lock:
            return {"token_calls": self.token_calls, "user_calls": self.user_calls, "tokens": len(self.tokens)}

    def _over_rate_limit(self, now: float) -> bool:
        while self.request_times and self.request_times[0] <= now - 1.0:
            self.request_times.popleft()
        return self.enforce_rate_limit and len(self.request_times) > self.RATE_LIMIT

    def _new_token(self) -> dict[str, Any]:
        token = f"mk-token-{next(self._token_numbers)}-{time.time_ns()}"
        self.tokens.add(token)
        expires = datetime.now(UTC) + self.token_lifetime
        if self.expires_form == "z":
            expires_at = expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        else:
            expires_at = expires.astimezone(timezone(timedelta(hours=3))).isoformat(timespec="seconds")
        return {"accessToken": token, "expiresAt": expires_at, "level": "company"}

    def _lesson(self, lesson_id: int, query: dict[str, list[str]]) -> tuple[int, Any]:
        """GET /v1/company/lessons/{lessonId}: its records only with includeRecords=true."""
        include_records = query.get("includeRecords", ["false"])
        if include_records not in (["true"], ["false"]):
            return 400, {"code": "RequestValidationError", "message": "includeRecords must be true or false"}
        lesson = self.lessons.get(lesson_id)
        if lesson is None:
            return 404, {"code": "NotFound", "message": "Lesson not found"}
        if include_records == ["false"]:
            return 200, {key: value for key, value in lesson.items() if key != "records"}
        return 200, lesson

    def route(self, request: _RequestHandler, body: Any) -> tuple[int, Any]:
        status, answer = self._route(request, body)
        path, _, query = request.path.partition("?")
        with self.lock:
            self.received.append({"method": request.command, "path": path, "query": query,
                                  "headers": dict(request.headers), "body": body, "status": status})
        return status, answer

    def _route(self, request: _RequestHandler, body: Any) -> tuple[int, Any]:
        now = time.monotonic()
        with self.lock:
            self.request_times.append(now)
            self.request_log.append(now)
            if self.fail_next:
                return self.fail_next.pop(0), {"code": "Fault", "message": "injected fault"}
            if self._over_rate_limit(now):
                self.rate_limited += 1
                return 429, {"code": "TooManyRequests", "message": "Rate limit exceeded"}
            if request.command == "POST" and request.path == "/v1/company/auth/getToken":
                self.token_calls += 1
                if not isinstance(body, dict) or body.get("apiKey") != self.api_key:
                    return 401, {"code": "Unauthorized", "message": "Invalid apiKey"}
                return 200, self._new_token()
            path, _, query = request.path.partition("?")
            if request.command == "GET" and path == "/v1/company/users":
                self.user_calls += 1
                if request.headers.get("x-access-token") not in self.tokens:
                    return 401, {"code": "Unauthorized", "message": "Invalid token"}
                return self._user_page(parse_qs(query))
            match = self.USER_PATH.match(request.path)
            if request.command == "GET" and match:
                self.user_calls += 1
                if request.headers.get("x-access-token") not in self.tokens:
                    return 401, {"code": "Unauthorized", "message": "Invalid token"}
                user = self._user(int(match.group(1)))
                if user is None:
                    return 404, {"code": "NotFound", "message": "User not found"}
                return 200, user
            match = self.LESSON_PATH.match(path)
            if request.command == "GET" and match:
                self.lesson_calls += 1
                if request.headers.get("x-access-token") not in self.tokens:
                    return 401, {"code": "Unauthorized", "message": "Invalid token"}
                return self._lesson(int(match.group(1)), parse_qs(query))
        return 404, {"code": "NotFound", "message": f"No route {request.command} {request.path}"}


def _user_ids(values: list[str]) -> list[int]:
    """userIds as the spec declares it (style form, explode false): given once, a comma list of at most
    100 int32 ids; a repeated userIds=1&userIds=2 is refused as MoyKlass' validator would."""
    if len(values) > 1:
        raise ValueError("userIds must be given once, as a comma list: userIds=1,2,3")
    items = values[0].split(",")
    if len(items) > 100:
        raise ValueError("userIds must hold at most 100 ids")
    if not all(re.fullmatch(r"\d{1,10}", item) and int(item) <= 2_147_483_647 for item in items):
        raise ValueError("userIds must be integers from 0 to 2147483647")
    return [int(item) for item in items]


class FakeOneClick(FakeService):
    """SendMsg.aspx: HTTP 200 always, `status` 0 on success, -1 bad phone, -10 bad credentials.
    SentMsgDR.aspx: the delivery report of a reference, StatusVal 1 (delivered) unless set."""

    SEND_PATH = "/SmsWebBulkApi/SendMsg.aspx"
    REPORT_PATH = "/SmsWebBulkApi/SentMsgDR.aspx"
    REPORT_DESCRIPTIONS = {1: "Isporučena", 2: "Nije isporučena", 3: "Neispravan broj", 5: "Na čekanju",
                           6: "Greška pri slanju", 8: "Blacklist", -201: "Neispravna referenca"}

    def __init__(self, username: str = "smartlab", password: str = "oneclick-pass") -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.messages: list[dict[str, Any]] = []
        self.answer_status: int | None = None  # force every answer to this gateway status
        self.report_status = 1  # StatusVal of every delivery report not set in `reports`
        self.reports: dict[str, int] = {}  # reference -> StatusVal
        self.report_calls = 0
        self._sent_references: set[str] = set()
        self.fail_next: list[int] = []  # HTTP statuses to answer the next requests with
        self._references = itertools.count(1000)

    @property
    def send_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.SEND_PATH}"

    def inspection(self) -> dict[str, Callable[[], Any]]:
        return {"/_fake/messages": self._messages, "/_fake/stats": self._stats}

    def _messages(self) -> list[dict[str, Any]]:
        """Every SMS accepted, in full: a test tool on loopback, not a log."""
        with self.lock:
            return list(self.messages)

    def _stats(self) -> dict[str, int]:
        with self.lock:
            return {"messages": len(self.messages), "report_calls": self.report_calls}

    def route(self, request: _RequestHandler, body: Any) -> tuple[int, Any]:
        with self.lock:
            if self.fail_next:
                return self.fail_next.pop(0), b"<html>Service Unavailable</html>"
            if request.command != "POST" or request.path not in (self.SEND_PATH, self.REPORT_PATH):
                return 404, b"<html>Not Found</html>"
            credentials = (request.headers.get("username"), request.headers.get("pwd"))
            if request.path == self.REPORT_PATH:
                return 200, self._report(body, credentials == (self.username, self.password))
            if credentials != (self.username, self.password):
                return 200, self._answer(-10, "Pogresno korisnicko ime ili lozinka")
            fields = ("sender", "message", "phone")
            if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in fields):
                return 200, self._answer(-3, "Neispravan zahtev")
            if self.answer_status is not None:
                return 200, self._answer(self.answer_status, "forced answer")
            if not re.fullmatch(r"[1-9]\d{9,14}", body["phone"]):
                return 200, self._answer(-1, "Neispravan broj telefona")
            reference = str(next(self._references))
            self.messages.append({**body, "reference": reference, "at": time.monotonic()})
            self._sent_references.add(reference)
            return 200, self._answer(0, "Poruka je poslata", reference)

    def _report(self, body: Any, authorized: bool) -> dict[str, Any]:
        self.report_calls += 1
        reference = str(body.get("reference", "")) if isinstance(body, dict) else ""
        if not authorized:
            status = -202
        elif reference in self._sent_references:
            status = self.reports.get(reference, self.report_status)
        else:
            status = -201
        return {"StatusVal": status, "Reference": reference,
                "Description": self.REPORT_DESCRIPTIONS.get(status, "Greška"), "Status": str(status)}

    @staticmethod
    def _answer(status: int, message: str, reference: str = "") -> dict[str, Any]:
        return {"Success": status == 0, "Message": message, "Reference": reference, "Status": status}


def _new_fake(service: str, numbered_users: int, rate_limit: bool) -> FakeService:
    if service == "moyklass":
        return FakeMoyKlass(enforce_rate_limit=rate_limit, numbered_users=numbered_users)
    return FakeOneClick()


def interruptible() -> None:
    """Ctrl+C (SIGINT) stops this process, even when it was started with SIGINT ignored, as a
    shell's background job is (Python then leaves it ignored, and a stop would go unheard)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def serve(service: str, port: int, latency: float = 0.0, numbered_users: int = 1000,
          rate_limit: bool = True) -> None:
    """Run one fake in the foreground until interrupted (a process of its own for benchmarks)."""
    interruptible()
    fake = _new_fake(service, numbered_users, rate_limit)
    fake.latency = latency
    fake.start(port)
    wait_for_interrupt()


NAMES = {"moyklass": "MoyKlass", "oneclick": "OneClick"}


def _describe(service: str, port: int) -> str:
    if service == "moyklass":
        return (f"fake MoyKlass on http://127.0.0.1:{port}/v1 (API_KEY=test-api-key);"
                f" what it was asked: GET http://127.0.0.1:{port}/_fake/stats")
    return (f"fake OneClick on http://127.0.0.1:{port}{FakeOneClick.SEND_PATH} (smartlab / oneclick-pass);"
            f" what it sent: GET http://127.0.0.1:{port}/_fake/messages and /_fake/stats")


def main(argv: list[str]) -> int:
    """Run both fakes, or the one named, until interrupted; 1 with one line if a port is taken."""
    interruptible()
    parser = argparse.ArgumentParser(prog="python -m tests.fakes",
                                     description="Run the fake MoyKlass and OneClick on 127.0.0.1")
    parser.add_argument("service", nargs="?", choices=["both", *NAMES], default="both",
                        help="which fake to run (default: both)")
    parser.add_argument("--moyklass-port", type=int, default=8081, help="default 8081")
    parser.add_argument("--oneclick-port", type=int, default=8082, help="default 8082")
    parser.add_argument("--users", type=int, default=100_000, help="MoyKlass users 1..N, each with a phone")
    parser.add_argument("--latency", type=float, default=0.0, help="delay of every answer, s")
    parser.add_argument("--no-rate-limit", action="store_true", help="MoyKlass: no 429 past 7 requests/s")
    parser.add_argument("--lesson", type=int, metavar="ID",
                        help="MoyKlass: lesson ID, tomorrow at 17:00, with students 1001-1003 booked")
    args = parser.parse_args(argv)
    ports = {"moyklass": args.moyklass_port, "oneclick": args.oneclick_port}
    services = list(NAMES) if args.service == "both" else [args.service]
    started: list[FakeService] = []
    try:
        for service in services:
            fake = _new_fake(service, args.users, not args.no_rate_limit)
            fake.latency = args.latency
            if service == "moyklass" and args.lesson:
                tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
                fake.add_lesson(args.lesson, tomorrow, "17:00", "Robotika",
                                [{"userId": user_id} for user_id in (1001, 1002, 1003)])
            try:
                started.append(fake.start(ports[service]))
            except OSError as error:
                print(f"fake {NAMES[service]}: cannot listen on 127.0.0.1:{ports[service]}:"
                      f" {os.strerror(error.errno)}", file=sys.stderr)
                return 1
        for service in services:
            print(_describe(service, ports[service]), flush=True)
        wait_for_interrupt()
    finally:
        for fake in started:
            fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
