"""gunicorn's gthread worker, with the answers gunicorn makes itself in the service's JSON envelope.

gunicorn answers a request it cannot parse (a garbage request line, a URL or a header past its
limits) before the app sees it, with an HTML page. `JsonErrorWorker` keeps all that gunicorn
decides there (the status, the reason, the log lines) and changes only what is written.
"""
from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn.http.message import Request
from gunicorn.workers.gthread import ThreadWorker


def json_error_answer(status_line: bytes, message: str) -> bytes:
    """A whole HTTP answer: `status_line`, then `{"status": "error", "message": message}`."""
    body = json.dumps({"status": "error", "message": message}).encode()
    head = b"\r\n".join([status_line, b"Connection: close", b"Content-Type: application/json",
                         b"Content-Length: %d" % len(body)])
    return head + b"\r\n\r\n" + body


class _JsonErrorSocket:
    """The client's socket as gunicorn's error writer (gunicorn.util.write_error) sees it.

    write_error sends its HTML page in one sendall, status line first; this sends the JSON envelope,
    with the reason as its message, under that same status line. All else goes to the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, html_answer: bytes) -> None:
        status_line = html_answer.split(b"\r\n", 1)[0]  # b"HTTP/1.1 414 URI Too Long"
        reason = status_line.split(b" ", 2)[2].decode("latin-1")
        self._sock.sendall(json_error_answer(status_line, reason))


class JsonErrorWorker(ThreadWorker):
    """The gthread worker; its own error answers are JSON (gunicorn.conf.py's worker_class)."""

    def handle_error(self, req: Request | None, client: socket.socket, addr: Any, exc: BaseException) -> None:
        super().handle_error(req, _JsonErrorSocket(client), addr, exc)
