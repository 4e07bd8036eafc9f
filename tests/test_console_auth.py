"""The console's accounts: the `users` commands, password hashing, sessions, throttling, roles, cookies, CSRF."""
from __future__ import annotations

import io
import re
import stat
import time
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

import cli
from console import accounts, secret
from console.access import PUBLIC
from sms_bulk_app import create_app
from tests.conftest import ROOT, settings_store

CliResult = tuple[int, str, str]
PASSWORD = "correct horse battery"


@pytest.fixture
def run_cli(settings, tmp_path, monkeypatch, capsys) -> Callable[..., CliResult]:
    """`python sms_bulk_app.py ARGS` in this process, `stdin` its standard input: (status, stdout, stderr)."""
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    def run(*args: str, stdin: str = "") -> CliResult:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        status = cli.main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def one_time_password(stdout: str) -> str:
    return re.search(r"^one-time password: (\S+)$", stdout, re.MULTILINE).group(1)


def test_users_create_prints_a_one_time_password_that_must_be_changed(run_cli, settings):
    status, stdout, stderr = run_cli("users", "create", "--email", " Ana@School.RS ", "--role", "admin")
    assert status == 0, stderr
    assert stdout.splitlines()[0] == "user 1 (ana@school.rs, admin) created"
    password = one_time_password(stdout)
    assert len(password) >= accounts.MIN_PASSWORD_LENGTH and "shown only now" in stderr
    user = settings_store(settings).user_by_email("ana@school.rs")
    assert user.must_change_password and user.password_hash.startswith("$argon2id$")
    assert password not in user.password_hash
    assert accounts.verify_password(user.password_hash, password)
    assert run_cli("users", "list")[1] == "   1  ana@school.rs                            admin     one-time password\n"


def test_users_create_takes_a_chosen_password_from_stdin(run_cli, settings):
    status, stdout, _ = run_cli("users", "create", "--email", "op@school.rs", "--role", "operator",
                                "--password-stdin", stdin=PASSWORD + "\n")
    assert status == 0 and "one-time" not in stdout
    user = settings_store(settings).user_by_email("op@school.rs")
    assert not user.must_change_password and accounts.verify_password(user.password_hash, PASSWORD)
    too_short = run_cli("users", "create", "--email", "b@school.rs", "--role", "viewer", "--password-stdin",
                        stdin="short\n")
    assert too_short[0] == 1 and "at least 10 characters" in too_short[2]


def test_users_create_refuses_a_second_account_a_bad_email_and_a_bad_role(run_cli):
    assert run_cli("users", "create", "--email", "a@school.rs", "--role", "viewer")[0] == 0
    again = run_cli("users", "create", "--email", "A@school.rs", "--role", "admin")
    assert again[0] == 1 and again[2] == "users create: there is an account for a@school.rs already\n"
    not_email = run_cli("users", "create", "--email", "nobody", "--role", "viewer")
    assert not_email[0] == 1 and "is not an email address" in not_email[2]
    bad_role = run_cli("users", "create", "--email", "c@school.rs", "--role", "root")
    assert bad_role[0] == 2 and "invalid choice" in bad_role[2]


def test_users_disable_ends_the_accounts_sessions(run_cli, settings):
    run_cli("users", "create", "--email", "v@school.rs", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    store = settings_store(settings)
    token = accounts.start_session(store, store.user_by_email("v@school.rs"), time.time())
    assert store.console_session_user(accounts.token_hash(token), time.time()) is not None
    assert run_cli("users", "disable", "v@school.rs")[:2] == (0, "v@school.rs disabled; their sessions ended\n")
    assert store.console_session_user(accounts.token_hash(token), time.time()) is None
    assert run_cli("users", "disable", "v@school.rs")[0] == 1  # not active any more
    assert "disabled" in run_cli("users", "list")[1]
    assert accounts.log_in(store, "v@school.rs", PASSWORD, "10.0.0.1", time.time()).user is None


@pytest.mark.production_password_hashing
def test_passwords_are_salted_argon2id_and_verified():
    first, second = accounts.hash_password(PASSWORD), accounts.hash_password(PASSWORD)
    assert first != second and first.startswith("$argon2id$v=19$m=65536,t=3,p=4$")  # RFC 9106's low-memory profile
    assert accounts.verify_password(first, PASSWORD)
    assert not accounts.verify_password(first, PASSWORD + "!")
    assert not accounts.verify_password("not a hash", PASSWORD)


def test_logins_are_throttled_per_account_and_per_address(store):
    now = 1_800_000_000.0
    accounts.create(store, "a@school.rs", "viewer", PASSWORD, now)
    for attempt in range(accounts.ACCOUNT_LIMIT):
        assert accounts.log_in(store, "a@school.rs", "wrong password", "10.0.0.1", now + attempt) == \
            accounts.LoginResult(None)
    throttled = accounts.log_in(store, "A@school.rs", PASSWORD, "10.0.0.2", now + 10)  # the right password
    assert throttled.user is None and throttled.retry_after == pytest.approx(accounts.THROTTLE_SECONDS - 10)
    later = now + accounts.THROTTLE_SECONDS + accounts.ACCOUNT_LIMIT
    assert accounts.log_in(store, "a@school.rs", PASSWORD, "10.0.0.2", later).user is not None
    # One address trying many accounts (none of which exists) is stopped too, and no account is told apart.
    for attempt in range(accounts.ADDRESS_LIMIT):
        accounts.log_in(store, f"guess{attempt}@school.rs", "x" * 12, "10.9.9.9", later + attempt)
    assert accounts.log_in(store, "a@school.rs", PASSWORD, "10.9.9.9", later + 30).retry_after is not None
    assert accounts.log_in(store, "a@school.rs", PASSWORD, "10.0.0.3", later + 30).user is not None


def test_sessions_end_at_logout_at_expiry_and_with_a_password_change(store):
    now = time.time()
    user_id, password = accounts.create(store, "a@school.rs", "admin", None, now)
    user = store.user_by_email("a@school.rs")
    kept, other = accounts.start_session(store, user, now), accounts.start_session(store, user, now)
    with pytest.raises(accounts.AccountError, match="the current password is wrong"):
        accounts.change_password(store, user, "wrong", PASSWORD, kept)
    accounts.change_password(store, user, password, PASSWORD, kept)
    assert store.console_session_user(accounts.token_hash(kept), now).must_change_password is False
    assert store.console_session_user(accounts.token_hash(other), now) is None
    assert store.console_session_user(accounts.token_hash(kept), now + accounts.SESSION_SECONDS + 1) is None
    store.end_console_session(accounts.token_hash(kept))
    assert store.console_session_user(accounts.token_hash(kept), now) is None


def test_the_secret_key_is_generated_once_kept_0600_and_shared(tmp_path):
    key = secret.secret_key(None, tmp_path)
    path = tmp_path / secret.SECRET_KEY_FILE
    assert len(key) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret.secret_key(None, tmp_path) == key
    assert secret.secret_key("k" * 40, tmp_path) == "k" * 40
    assert [p.name for p in tmp_path.iterdir()] == [secret.SECRET_KEY_FILE]  # no draft left


def test_a_short_secret_key_stops_the_start(settings):
    from config import ConfigError, load_config

    with pytest.raises(ConfigError, match="SECRET_KEY must have at least 32 characters"):
        load_config(settings | {"SECRET_KEY": "short"})
    assert "s" * 40 in load_config(settings | {"SECRET_KEY": "s" * 40}).secrets()


def csrf_token(page: bytes) -> str:
    return re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', page).group(1).decode()


def log_in(client: FlaskClient, email: str, password: str, **environ: str) -> None:
    token = csrf_token(client.get("/login", environ_overrides=environ).data)
    response = client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                           environ_overrides=environ)
    assert response.status_code == 302, response.data


@pytest.fixture
def people(app: Flask) -> dict[str, str]:
    """An account of each role, with a chosen password: email by role."""
    store = app.extensions["sms_bulk_app"].store
    for role in accounts.ROLES:
        accounts.create(store, f"{role}@school.rs", role, PASSWORD, time.time())
    return {role: f"{role}@school.rs" for role in accounts.ROLES}


def test_every_console_view_declares_who_may_use_it(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("console.") and rule.endpoint != "console.static":
            role = getattr(app.view_functions[rule.endpoint], "console_role", None)
            assert role in (*accounts.ROLES, PUBLIC), f"{rule.endpoint} has no @requires"


@pytest.mark.parametrize("role, users_page", [("viewer", 403), ("operator", 403), ("admin", 200)])
def test_roles_are_enforced(app, people, role, users_page):
    client = app.test_client()
    assert client.get("/").status_code == 302  # to the login page
    log_in(client, people[role], PASSWORD)
    assert client.get("/").status_code == 200
    page = client.get("/users", headers={"Accept": "text/html"})
    assert page.status_code == users_page and page.content_type.startswith("text/html")
    if users_page == 403:
        assert b"Your role does not allow this" in page.data
        token = csrf_token(client.get("/").data)
        assert client.post("/users", data={"email": "x@school.rs", "role": "admin", "csrf_token": token}
                           ).status_code == 403


def test_one_time_password_leads_to_the_password_page_until_changed(app):
    store = app.extensions["sms_bulk_app"].store
    _, password = accounts.create(store, "new@school.rs", "admin", None, time.time())
    client = app.test_client()
    log_in(client, "new@school.rs", password)
    assert client.get("/").headers["Location"] == "/password"
    assert client.get("/users").headers["Location"] == "/password"
    token = csrf_token(client.get("/password").data)
    changed = client.post("/password", data={"current": password, "new": PASSWORD, "repeat": PASSWORD,
                                             "csrf_token": token})
    assert changed.headers["Location"] == "/"
    assert client.get("/").status_code == 200


def test_session_cookie_is_httponly_lax_and_secure_over_https(settings, app, people):
    cookie = _login_cookie(app)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    # Behind nginx over HTTPS: X-Forwarded-Proto from the trusted proxy (ProxyFix) makes it Secure. (Over
    # HTTPS Flask-WTF also wants the form to come from this site's page: the Referer a browser sends.)
    assert "Secure" in _login_cookie(app, headers={"X-Forwarded-Proto": "https", "Referer": "https://localhost/login"})
    assert "Secure" in _login_cookie(create_app(settings | {"PUBLIC_URL": "https://sms.school.rs"}))


def _login_cookie(app: Flask, headers: dict[str, str] | None = None) -> str:
    """The Set-Cookie of a successful login of viewer@school.rs."""
    client = app.test_client()
    token = csrf_token(client.get("/login", headers=headers).data)
    response = client.post("/login", headers=headers,
                           data={"email": "viewer@school.rs", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    return response.headers["Set-Cookie"]


def test_forms_need_their_csrf_token_and_the_api_webhook_do_not(client, people):
    refused = client.post("/login", data={"email": people["admin"], "password": PASSWORD})
    assert refused.status_code == 400 and refused.content_type.startswith("text/html")
    assert b"did not come from this site" in refused.data
    webhook = client.post("/webhook", json={"event": "no_such_event", "object": {"userId": 1}})
    assert webhook.status_code == 200 and webhook.get_json()["status"] == "ignored"
    api = client.post("/api/v1/clients", json={"phone": "0641000001"})
    assert api.status_code == 401 and api.is_json  # asked for a key, not for a CSRF token


def test_errors_are_pages_for_the_console_and_json_for_the_api(client):
    page = client.get("/no-such-page", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404 and b"There is no such page" in page.data
    assert client.get("/no-such-page").is_json  # curl, scripts
    api = client.get("/api/v1/no-such", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.is_json


def test_language_follows_accept_language_and_the_switch(client, people):
    assert "Войти".encode() in client.get("/login", headers={"Accept-Language": "ru-RU,ru;q=0.9"}).data
    page = client.get("/login")
    assert b"Log in" in page.data
    client.post("/language", data={"lang": "ru", "next": "/login", "csrf_token": csrf_token(page.data)})
    assert "Войти".encode() in client.get("/login").data


def test_logout_ends_the_session(client, people, app):
    log_in(client, people["viewer"], PASSWORD)
    stolen = client.get_cookie("sms_console").value
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/").data)})
    [logout] = app.extensions["sms_bulk_app"].store.audit_entries(None, "logout", None, None, None, 10)
    assert (logout.actor, logout.object_type) == (people["viewer"], "user")
    assert client.get("/").status_code == 302
    client.set_cookie("sms_console", stolen)  # the cookie as it was before the logout opens nothing
    assert client.get("/").status_code == 302


def test_every_console_text_has_a_russian_translation_compiled_into_the_mo_file():
    from babel.messages.extract import extract_from_dir
    from babel.messages.mofile import read_mo
    from babel.messages.pofile import read_po

    console_dir = ROOT / "console"
    found = {message for _, _, message, _, _ in extract_from_dir(
        console_dir, [("**.py", "python"), ("**/templates/**.html", "jinja2")],
        keywords={"_": None, "_l": None, "gettext": None})}
    translations = console_dir / "translations" / "ru" / "LC_MESSAGES"
    with open(translations / "messages.po", "rb") as po, open(translations / "messages.mo", "rb") as mo:
        catalog, compiled = read_po(po), read_mo(mo)
    written = {message.id: message.string for message in catalog if message.id}
    assert found == set(written), "run the pybabel commands of console/babel.cfg"
    assert all(written.values())
    assert {message.id: message.string for message in compiled if message.id} == written


def test_an_admin_creates_and_disables_accounts_but_not_their_own(app, people):
    admin, viewer = app.test_client(), app.test_client()
    log_in(admin, people["admin"], PASSWORD)
    log_in(viewer, people["viewer"], PASSWORD)
    token = csrf_token(admin.get("/users").data)
    created = admin.post("/users", data={"email": "New@School.rs", "role": "operator", "csrf_token": token})
    assert created.status_code == 201
    one_time = re.search(rb'id="one-time-password">([^<]+)<', created.data).group(1).decode()
    assert accounts.log_in(app.extensions["sms_bulk_app"].store, "new@school.rs", one_time, "10.0.0.1",
                           time.time()).user.must_change_password
    assert admin.post("/users", data={"email": "new@school.rs", "role": "viewer", "csrf_token": token}
                      ).status_code == 400
    store = app.extensions["sms_bulk_app"].store
    viewer_id, admin_id = store.user_by_email(people["viewer"]).id, store.user_by_email(people["admin"]).id
    assert admin.post(f"/users/{admin_id}/disable", data={"csrf_token": token}).status_code == 403
    assert admin.post(f"/users/{viewer_id}/disable", data={"csrf_token": token}).status_code == 302
    assert viewer.get("/").status_code == 302  # the viewer's session ended with the account


# Where `next` sends after a login or the language switch: a plain path on this site, or the dashboard.
NEXT_TARGETS = [
    ("/\t/evil.example", "/"),  # urlsplit (and browsers) drop the tab: it would be sent as //evil.example
    ("/\r\n/evil.example", "/"),
    ("/messages\r\nSet-Cookie: sms_console=x", "/"),  # a header split
    ("//evil.example", "/"),
    ("/\\evil.example", "/"),  # browsers read the backslash as /
    ("https://evil.example/", "/"),
    ("javascript:alert(1)", "/"),
    ("/messages?status=FAILED", "/messages?status=FAILED"),
]


@pytest.mark.parametrize("target, location", NEXT_TARGETS)
def test_login_sends_to_next_only_when_it_is_a_path_on_this_site(client, people, target, location):
    page = client.get("/login", query_string={"next": target})
    assert page.status_code == 200 and b"Log in" in page.data
    answer = client.post("/login", data={"email": people["viewer"], "password": PASSWORD, "next": target,
                                         "csrf_token": csrf_token(page.data)})
    assert answer.status_code == 302 and answer.headers["Location"] == location


@pytest.mark.parametrize("target, location", NEXT_TARGETS)
def test_the_language_switch_sends_to_next_only_when_it_is_a_path_on_this_site(client, target, location):
    token = csrf_token(client.get("/login").data)
    answer = client.post("/language", data={"lang": "ru", "next": target, "csrf_token": token})
    assert answer.status_code == 302 and answer.headers["Location"] == location
    assert "Войти".encode() in client.get("/login").data  # the switch itself worked
