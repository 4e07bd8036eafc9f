"""The way back for people's accounts: a forgotten password reset, a disabled account enabled
again, a role changed; from the command line and from the console's Users page (admin), each audited."""
from __future__ import annotations

import re
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from console import accounts
from tests import test_console_auth as auth
from tests.test_console_auth import PASSWORD, csrf_token, log_in, one_time_password

# Its fixture: `run_cli`, the command line in this process.
run_cli = auth.run_cli


def audited(app_or_store, action: str) -> list[str]:
    store = app_or_store.extensions["sms_bulk_app"].store if isinstance(app_or_store, Flask) else app_or_store
    return [entry.object_id for entry in store.audit_entries(None, action, None, None, None, 50)]


def can_log_in(app: Flask, email: str, password: str) -> bool:
    client = app.test_client()
    token = csrf_token(client.get("/login").data)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token}).status_code == 302


def test_the_command_line_resets_a_password_enables_an_account_and_changes_a_role(run_cli, app):
    store = app.extensions["sms_bulk_app"].store
    assert run_cli("users", "create", "--email", "ana@school.rs", "--role", "operator", "--password-stdin",
                   stdin=PASSWORD + "\n")[0] == 0
    assert run_cli("users", "disable", "ana@school.rs")[0] == 0
    assert not can_log_in(app, "ana@school.rs", PASSWORD)
    assert run_cli("users", "enable", "ana@school.rs")[:2] == (0, "ana@school.rs may log in\n")
    assert can_log_in(app, "ana@school.rs", PASSWORD)

    status, stdout, stderr = run_cli("users", "reset-password", "Ana@School.rs")
    assert status == 0 and stdout.startswith("ana@school.rs: password reset; their sessions ended\n")
    one_time = one_time_password(stdout)
    assert "shown only now" in stderr
    assert not can_log_in(app, "ana@school.rs", PASSWORD)
    assert can_log_in(app, "ana@school.rs", one_time) and store.user_by_email("ana@school.rs").must_change_password

    assert run_cli("users", "set-role", "ana@school.rs", "--role", "viewer")[:2] == (0, "ana@school.rs is viewer\n")
    assert run_cli("users", "set-role", "ana@school.rs", "--role", "viewer")[0] == 0  # already: not audited again
    assert store.user_by_email("ana@school.rs").role == "viewer"
    user_id = str(store.user_by_email("ana@school.rs").id)
    assert (audited(store, "user.enable"), audited(store, "user.reset_password"), audited(store, "user.role")
            ) == ([user_id], [user_id], [user_id])
    assert run_cli("users", "reset-password", "nobody@school.rs")[::2] == (
        1, "users reset-password: there is no account for nobody@school.rs\n")


def test_a_reset_forgets_the_failed_logins_that_locked_the_account(run_cli, app):
    run_cli("users", "create", "--email", "ana@school.rs", "--role", "viewer", "--password-stdin",
            stdin=PASSWORD + "\n")
    for _ in range(accounts.ACCOUNT_LIMIT):
        assert not can_log_in(app, "ana@school.rs", "not the password")
    assert not can_log_in(app, "ana@school.rs", PASSWORD)  # locked for a quarter of an hour
    assert run_cli("users", "reset-password", "ana@school.rs", "--password-stdin", stdin="a new password 42\n")[0] == 0
    assert can_log_in(app, "ana@school.rs", "a new password 42")


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    store = app.extensions["sms_bulk_app"].store
    accounts.create(store, "admin@school.rs", accounts.ADMIN, PASSWORD, time.time())
    accounts.create(store, "ana@school.rs", accounts.OPERATOR, PASSWORD, time.time())
    client = app.test_client()
    log_in(client, "admin@school.rs", PASSWORD)
    return client


def post(client: FlaskClient, path: str, **fields: str):
    return client.post(path, data={"csrf_token": csrf_token(client.get("/users").data), **fields})


def test_an_admin_resets_a_password_in_the_console_and_the_persons_sessions_end(app, admin):
    ana = app.test_client()
    log_in(ana, "ana@school.rs", PASSWORD)
    assert ana.get("/").status_code == 200
    page = post(admin, "/users/2/reset-password")
    assert page.status_code == 200
    shown = re.search(rb'<code id="one-time-password">([^<]+)</code>', page.data).group(1).decode()
    assert b"Password of ana@school.rs reset" in page.data
    assert ana.get("/").status_code == 302  # logged out
    assert not can_log_in(app, "ana@school.rs", PASSWORD) and can_log_in(app, "ana@school.rs", shown)
    assert audited(app, "user.reset_password") == ["2"]


def test_an_admin_changes_a_role_disables_and_enables_in_the_console(app, admin):
    store = app.extensions["sms_bulk_app"].store
    assert post(admin, "/users/2/role", role="viewer").status_code == 302
    assert store.user_by_email("ana@school.rs").role == "viewer"
    assert post(admin, "/users/2/role", role="owner").status_code == 400
    assert post(admin, "/users/2/disable").status_code == 302 and not can_log_in(app, "ana@school.rs", PASSWORD)
    assert b'id="enable-2"' in admin.get("/users").data
    assert post(admin, "/users/2/enable").status_code == 302 and can_log_in(app, "ana@school.rs", PASSWORD)
    assert [audited(app, action) for action in ("user.role", "user.disable", "user.enable")] == [["2"]] * 3


@pytest.mark.parametrize("action", ["reset-password", "role", "enable", "disable"])
def test_an_admin_cannot_act_on_their_own_account_nor_on_none(admin, action):
    assert post(admin, f"/users/1/{action}", role="viewer").status_code == 403
    assert post(admin, f"/users/99/{action}", role="viewer").status_code == 404


@pytest.mark.parametrize("action", ["reset-password", "role", "enable"])
def test_only_an_admin_may_and_only_with_the_forms_token(app, admin, action):
    operator = app.test_client()
    log_in(operator, "ana@school.rs", PASSWORD)
    token = csrf_token(operator.get("/").data)
    assert operator.post(f"/users/1/{action}", data={"csrf_token": token, "role": "viewer"}).status_code == 403
    assert admin.post(f"/users/2/{action}", data={"role": "viewer"}).status_code == 400  # no CSRF token
