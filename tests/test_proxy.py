"""Who the client is: X-Forwarded-For and X-Forwarded-Proto are believed from TRUSTED_PROXIES (nginx on
loopback by default) and ignored from anyone else, who could otherwise pick an address per request
and never be throttled, or pass for HTTPS."""
from __future__ import annotations

import pytest

from sms_bulk_app import create_app
from tests.test_console_auth import csrf_token


def failed_login_detail(settings: dict[str, str], peer: str, forwarded_for: str) -> str:
    app = create_app(settings)
    client = app.test_client()
    environ = {"REMOTE_ADDR": peer}
    token = csrf_token(client.get("/login", environ_overrides=environ).data)
    answer = client.post("/login", data={"email": "nobody@school.rs", "password": "not the password",
                                         "csrf_token": token},
                         headers={"X-Forwarded-For": forwarded_for}, environ_overrides=environ)
    assert answer.status_code == 401 and b"Wrong email or password" in answer.data
    store = app.extensions["sms_bulk_app"].store
    [entry] = store.audit_entries(None, "login.failed", None, None, None, 10)
    return entry.detail


@pytest.mark.parametrize(("peer", "trusted", "seen"), [
    ("127.0.0.1", None, "10.9.9.9"),  # nginx on this host, the default
    ("203.0.113.5", None, "203.0.113.5"),  # a client reaching gunicorn directly: its header is ignored
    ("192.0.2.10", "192.0.2.10", "10.9.9.9"),  # a proxy on another host, named in TRUSTED_PROXIES
])
def test_the_forwarded_address_is_believed_only_from_a_trusted_proxy(settings, peer, trusted, seen):
    if trusted:
        settings["TRUSTED_PROXIES"] = trusted
    assert failed_login_detail(settings, peer, "10.9.9.9").endswith(f"from {seen}")


def test_https_is_believed_only_from_a_trusted_proxy(settings):
    app = create_app(settings)
    for peer, secure in (("127.0.0.1", True), ("203.0.113.5", False)):
        answer = app.test_client().get("/login", headers={"X-Forwarded-Proto": "https"},
                                       environ_overrides={"REMOTE_ADDR": peer})
        cookie = answer.headers["Set-Cookie"]
        assert ("Secure" in cookie) is secure, (peer, cookie)
