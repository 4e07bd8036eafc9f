"""Errors made by gunicorn and nginx themselves, not by the app, are JSON like the app's.

Raw sockets: these requests are ones no HTTP library would send (a garbage request line, a URL or a
header past the servers' limits), and a burst must hold its connections open at the same moment.
"""
from __future__ import annotations

import http.client
import json
import re
import select
import socket
import time

import pytest

from tests.conftest import ROOT, free_port, running_gunicorn
from tests.test_deploy import needs_nginx, nginx_site, running_nginx

MALFORMED_REQUESTS = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "URL past the request line limit": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "header past the header limit": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
}


def exchange(port: int, request: bytes) -> http.client.HTTPResponse:
    """Send `request` as is and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        response = http.client.HTTPResponse(connection)
        response.begin()
        response.body = response.read()
        return response


def assert_json_error(response: http.client.HTTPResponse, status: int, message: str) -> None:
    assert response.status == status, response.body
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(response.body) == {"status": "error", "message": message}


@pytest.mark.parametrize("case, status, reason", [
    ("garbage request line", 400, "Bad Request"),
    ("URL past the request line limit", 414, "URI Too Long"),
    ("header past the header limit", 431, "Request Header Fields Too Large"),
])
def test_gunicorn_answers_requests_it_cannot_parse_with_json(settings, case, status, reason):
    with running_gunicorn(settings, workers=1, threads=2) as base_url:
        response = exchange(int(base_url.rsplit(":", 1)[1]), MALFORMED_REQUESTS[case])
    assert response.reason == reason
    assert_json_error(response, status, reason)


def test_a_broken_chunked_body_is_a_json_400_not_a_500(settings):
    """gunicorn raises its own InvalidChunkSize while the app reads the body; it was answered 500
    with a traceback in the log."""
    broken = (b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    with running_gunicorn(settings, workers=1, threads=2) as base_url:
        response = exchange(int(base_url.rsplit(":", 1)[1]), broken)
    assert_json_error(response, 400, "the body could not be read (InvalidChunkSize)")


@needs_nginx
def test_nginx_answers_requests_it_cannot_parse_and_a_missing_app_with_json(tmp_path):
    main, port = nginx_site(tmp_path, upstream_port=free_port())  # nothing listens there
    with running_nginx(main, port):
        garbage = exchange(port, MALFORMED_REQUESTS["garbage request line"])
        long_url = exchange(port, MALFORMED_REQUESTS["URL past the request line limit"])
        big_header = exchange(port, MALFORMED_REQUESTS["header past the header limit"])
        no_app = exchange(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        error_location = exchange(port, b"GET /_sms_bulk_app_error/failed HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        gzip_body = exchange(port, b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n")
        http_9 = exchange(port, b"GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n")
    assert_json_error(garbage, 400, "the request is not valid HTTP")
    assert_json_error(long_url, 414, "the URL is too long")
    assert_json_error(big_header, 400, "the request headers are too large")
    assert_json_error(no_app, 503, "SMSBulkApp is not running; try again later")
    assert_json_error(error_location, 404, "not found")  # nginx's internal error locations stay internal
    assert_json_error(gzip_body, 501, "this transfer encoding or method is not supported")
    assert_json_error(http_9, 505, "this HTTP version is not supported")


# More than the webhook's burst of 300 (nginx.conf), all in flight at once: 2 connections each.
BURST = 320


def documented_worker_connections() -> int:
    """The worker_connections nginx.conf's header tells operators to set."""
    return int(re.search(r"worker_connections (\d+);", (ROOT / "nginx.conf").read_text()).group(1))


def wait_until_nginx_stops_closing(connections: list[socket.socket]) -> None:
    """Until nginx has closed every connection it had no room for: none more in 0.1 s.

    Until then a connection it has taken but not yet read from is one it may still drop for a
    newer one, and a request completed meanwhile could get that room instead of a 500."""
    poller = select.poll()
    for connection in connections:
        poller.register(connection, select.POLLIN)
    closed = -1
    deadline = time.monotonic() + 5
    while len(poller.poll(0)) != closed:
        assert time.monotonic() < deadline, "nginx kept closing connections for 5 s"
        closed = len(poller.poll(0))
        time.sleep(0.1)


def burst(port: int, count: int) -> list[http.client.HTTPResponse | None]:
    """`count` requests in flight at once; None for each connection nginx closed unanswered.

    Each connection first sends its headers but the last line, so that nginx holds all of them,
    busy, at the same moment; then every request is completed and every answer read."""
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=15)
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        connections.append(connection)
    wait_until_nginx_stops_closing(connections)
    answers: list[http.client.HTTPResponse | None] = []
    for connection in connections:
        try:
            connection.sendall(b"Connection: close\r\n\r\n")
        except ConnectionError:
            pass  # closed already; reading tells
    for connection in connections:
        with connection:
            try:
                response = http.client.HTTPResponse(connection)
                response.begin()
                response.body = response.read()
                answers.append(response)
            except ConnectionError:
                answers.append(None)
    return answers


@needs_nginx
def test_nginx_out_of_worker_connections_answers_json_and_the_documented_size_takes_the_burst(settings,
                                                                                             tmp_path):
    with running_gunicorn(settings, workers=1) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        (tmp_path / "tiny").mkdir()
        main, port = nginx_site(tmp_path / "tiny", upstream_port, worker_connections=16)
        with running_nginx(main, port):
            starved = burst(port, BURST)
        (tmp_path / "documented").mkdir()
        main, port = nginx_site(tmp_path / "documented", upstream_port, documented_worker_connections())
        with running_nginx(main, port):
            sized = burst(port, BURST)
    answered = [response for response in starved if response is not None]
    assert 0 < len(answered) < BURST  # the rest were closed: nginx had no room to take them
    passed = [response for response in answered if response.status == 200]
    failed = [response for response in answered if response.status != 200]
    assert failed, "no request found nginx out of connections"
    for response in failed:
        assert_json_error(response, 500, "the proxy could not handle the request; try again later")
    assert all(response is not None for response in sized)
    assert [response.status for response in sized] == [200] * BURST
    assert all(json.loads(response.body)["status"] == "ok" for response in passed + sized)
