"""The audit log: each kind of change, through the API, the command line and the console, leaves
exactly one entry naming the right actor, without phones or secrets; admins read it in the console."""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import api_keys
import audit
import mailings
from console import accounts
from store import AuditEntry, Store
from tests import test_console_auth
from tests.test_console_auth import PASSWORD, csrf_token, log_in

PHONE, PHONE_DIGITS = "+381641234567", "641234567"
run_cli = test_console_auth.run_cli  # the fixture, in this process


class Audit:
    """The entries written since the last `one`: each call expects exactly one new entry."""

    def __init__(self, store: Store):
        self.store, self.seen = store, 0

    def all(self) -> list[AuditEntry]:
        return self.store.audit_entries(None, None, None, None, None, 10_000)

    def one(self, action: str, channel: str, actor: str, object_id: object = None) -> AuditEntry:
        new = [entry for entry in self.all() if entry.id > self.seen]
        assert len(new) == 1, new
        entry = new[0]
        assert (entry.action, entry.channel, entry.actor) == (action, channel, actor), entry
        if object_id is not None:
            assert entry.object_id == str(object_id), entry
        self.seen = entry.id
        return entry

    def none(self) -> None:
        assert [entry for entry in self.all() if entry.id > self.seen] == []


def _no_secrets(entries: list[AuditEntry], *secrets: str) -> None:
    for entry in entries:
        text = f"{entry.actor} {entry.object_id} {entry.detail}"
        assert PHONE_DIGITS not in text and not any(secret in text for secret in secrets), entry


def _soon(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


def test_every_change_through_the_api_is_audited_once_under_its_key(app):
    store = app.extensions["sms_bulk_app"].store
    key_id, key = api_keys.create(store, "crm", list(api_keys.SCOPES), None)
    client, log = app.test_client(), Audit(store)
    actor = f"key {key_id} (crm)"

    def call(method: str, path: str, expected: int, **kwargs):
        headers = kwargs.pop("headers", {}) | {"Authorization": f"Bearer {key}"}
        response = client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)
        assert response.status_code == expected, response.get_json()
        return response.get_json()

    created = call("POST", "/clients", 201, json={"phone": PHONE, "name": "Ana Jović", "tags": ["robotika"]})
    log.one("client.create", audit.API, actor, created["id"])
    call("PATCH", f"/clients/{created['id']}", 200, json={"name": "Ana J."})
    assert log.one("client.update", audit.API, actor, created["id"]).detail == "fields: name"
    call("POST", "/clients/import", 200, data="phone,name\n0641000002,Marko\n0641000003,Ivan\n",
         headers={"Content-Type": "text/csv"})
    assert log.one("client.import", audit.API, actor).detail == "2 created, 0 updated, 0 rejected"
    call("DELETE", f"/clients/{created['id']}", 204)
    log.one("client.delete", audit.API, actor, created["id"])
    call("DELETE", f"/clients/{created['id']}", 404)  # refused: nothing changed, nothing recorded
    log.none()

    later = {"start_at": _soon(60), "end_at": _soon(120), "text": "Zdravo {first_name}", "filter": {"all": True}}
    mailing = call("POST", "/mailings", 201, json=later)
    log.one("mailing.create", audit.API, actor, mailing["id"])
    call("PATCH", f"/mailings/{mailing['id']}", 200, json={"text": "Zdravo!"})
    assert log.one("mailing.update", audit.API, actor, mailing["id"]).detail == "fields: text"
    call("DELETE", f"/mailings/{mailing['id']}", 204)
    log.one("mailing.delete", audit.API, actor, mailing["id"])
    running = call("POST", "/mailings", 201, json=later | {"start_at": _soon(-1)})
    log.one("mailing.create", audit.API, actor, running["id"])
    mailings.start_due(store, time.time())
    call("POST", f"/mailings/{running['id']}/retry-failed", 200)
    assert log.one("mailing.retry", audit.API, actor, running["id"]).detail == "0 queued again"
    call("POST", f"/mailings/{running['id']}/cancel", 200)
    log.one("mailing.cancel", audit.API, actor, running["id"])

    sent = call("POST", "/messages", 202, json={"phone": PHONE, "text": "Hello"})
    log.one("message.send", audit.API, actor, sent["id"])

    template = call("POST", "/templates", 201, json={"name": "otp", "text": "Code {CODE}"})
    log.one("template.create", audit.API, actor, template["id"])
    edited = call("PATCH", f"/templates/{template['id']}", 200, json={"text": "Your code {CODE}"})
    log.one("template.edit", audit.API, actor, template["id"])
    call("POST", f"/templates/{template['id']}/approve", 200, query_string={"version": edited["version"]})
    log.one("template.approve", audit.API, actor, template["id"])
    batch = call("POST", "/requests", 201, json={"template": "otp", "recipients": [
        {"phone": PHONE, "variables": {"CODE": "1234"}}, {"phone": "12", "variables": {"CODE": "5"}}]})
    assert log.one("batch_request.create", audit.API, actor, batch["id"]).detail == \
        "template otp: 1 queued, 1 rejected"
    _no_secrets(log.all(), key)


def test_every_change_through_the_command_line_is_audited_once_as_cli(run_cli, settings, tmp_path, moyklass):
    from tests.conftest import settings_store

    assert run_cli("users", "create", "--email", "ana@school.rs", "--role", "admin")[0] == 0
    store = settings_store(settings)
    log, actor = Audit(store), f"cli ({audit._os_user()})"
    log.one("user.create", audit.CLI, actor, 1)
    assert run_cli("users", "disable", "ana@school.rs")[0] == 0
    log.one("user.disable", audit.CLI, actor, 1)
    assert run_cli("users", "disable", "ana@school.rs")[0] == 1  # not active: nothing changed
    log.none()

    status, stdout, _ = run_cli("keys", "create", "--name", "crm", "--scopes", "read")
    assert status == 0
    key = stdout.split(": ")[-1].strip()
    assert log.one("key.create", audit.CLI, actor, 1).detail == "crm; read"
    assert run_cli("keys", "revoke", "1")[0] == 0
    log.one("key.revoke", audit.CLI, actor, 1)

    status, stdout, _ = run_cli("send", "--phone", PHONE, "--text", "Hello")
    assert status == 0
    log.one("message.send", audit.CLI, actor, stdout.split()[-1])
    assert run_cli("retry-failed")[0] == 0
    assert log.one("message.resend", audit.CLI, actor).detail == "0 queued again"

    csv_file = tmp_path / "clients.csv"
    csv_file.write_text(f"phone,name\n{PHONE},Ana\n0641000002,Marko\n")
    assert run_cli("import-clients", str(csv_file))[0] == 0
    assert log.one("client.import", audit.CLI, actor).detail == "clients.csv: 2 created, 0 updated, 0 rejected"
    moyklass.add_user(1001, "+381641000009")
    assert run_cli("sync-moyklass")[0] == 0
    assert log.one("client.import", audit.CLI, actor).detail.startswith("from MoyKlass: 1 created")

    template = store.create_template("otp", "Code {CODE}", "test", False)
    assert run_cli("templates", "approve", str(template.id))[0] == 0
    assert log.one("template.approve", audit.CLI, actor, template.id).detail == "version 1"
    _no_secrets(log.all(), key)


@pytest.fixture
def admin(app):
    """A logged-in admin's client, and the store."""
    store = app.extensions["sms_bulk_app"].store
    accounts.create(store, "admin@school.rs", accounts.ADMIN, PASSWORD, time.time())
    client = app.test_client()
    log_in(client, "admin@school.rs", PASSWORD)
    return client, store


def test_logins_failed_logins_and_every_change_through_the_console_are_audited_once(app, admin):
    client, store = admin
    log = Audit(store)
    admin_id = store.user_by_email("admin@school.rs").id
    log.one("login", audit.CONSOLE, "admin@school.rs", admin_id)  # the fixture's login

    stranger = app.test_client()
    token = csrf_token(stranger.get("/login").data)
    assert stranger.post("/login", data={"email": "admin@school.rs", "password": "wrong password!",
                                         "csrf_token": token}).status_code == 401
    failed = log.one("login.failed", audit.CONSOLE, audit.NOT_LOGGED_IN, admin_id)
    assert failed.detail == "wrong email or password, from 127.0.0.1"
    stranger.post("/login", data={"email": "nobody@school.rs", "password": PASSWORD, "csrf_token": token})
    assert log.one("login.failed", audit.CONSOLE, audit.NOT_LOGGED_IN).object_id is None

    token = csrf_token(client.get("/users").data)
    assert client.post("/users", data={"email": "op@school.rs", "role": "operator", "csrf_token": token}
                       ).status_code == 201
    operator_id = store.user_by_email("op@school.rs").id
    assert log.one("user.create", audit.CONSOLE, "admin@school.rs", operator_id).detail == "role operator"
    client.post(f"/users/{operator_id}/disable", data={"csrf_token": token})
    log.one("user.disable", audit.CONSOLE, "admin@school.rs", operator_id)
    client.post("/password", data={"current": PASSWORD, "new": PASSWORD + "!", "repeat": PASSWORD + "!",
                                   "csrf_token": token})
    log.one("user.password", audit.CONSOLE, "admin@school.rs", admin_id)

    assert client.post("/providers/oneclick/pause", data={"hours": "8", "csrf_token": token}).status_code == 302
    assert log.one("provider.pause", audit.CONSOLE, "admin@school.rs", "oneclick").detail == "for 8 h"
    assert client.post("/providers/oneclick/resume", data={"csrf_token": token}).status_code == 302
    log.one("provider.resume", audit.CONSOLE, "admin@school.rs", "oneclick")
    client.post("/providers/oneclick/resume", data={"csrf_token": token})  # not paused: nothing changed
    log.none()
    _no_secrets(log.all(), PASSWORD)


def test_an_unknown_action_is_refused(store):
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record(store, "client.creat", "client", 1)


def test_admins_read_the_log_filtered_and_paged_and_others_may_not(app, admin):
    client, store = admin
    now = time.time()
    for number in range(120):
        store.record_audit(now - 86400 * 3 + number, audit.API, f"key {number % 2 + 1} (crm)", number % 2 + 1,
                           "client.create", "client", str(number), "")
    store.record_audit(now, audit.CLI, "cli (root)", None, "key.revoke", "key", "7", "")
    page = client.get("/audit").data.decode()
    assert page.count("<tr>") == 1 + 50 and "<td>key.revoke</td>" in page and 'id="older"' in page
    assert {"cli (root)", "key 1 (crm)", "key 2 (crm)", "admin@school.rs"} <= set(store.audit_actors())

    older = client.get("/audit").data.decode().split('id="older"')[0].rsplit('href="', 1)[1].split('"')[0]
    second = client.get(older.replace("&amp;", "&")).data.decode()
    assert second.count("<tr>") == 1 + 50 and "<td>key.revoke</td>" not in second

    only = client.get("/audit", query_string={"actor": "cli (root)"}).data.decode()
    assert only.count("<tr>") == 2 and "<td>key.revoke</td>" in only
    by_action = client.get("/audit", query_string={"action": "key.revoke"}).data.decode()
    assert by_action.count("<tr>") == 2
    zone = ZoneInfo(app.extensions["sms_bulk_app"].config.default_timezone)
    days_ago = datetime.fromtimestamp(now - 86400 * 3, zone).date().isoformat()
    then = client.get("/audit", query_string={"from": days_ago, "to": days_ago}).data.decode()
    assert "<td>key.revoke</td>" not in then and "<td>client.create</td>" in then
    since_today = client.get("/audit", query_string={"from": datetime.fromtimestamp(now, zone).date().isoformat()}
                             ).data.decode()
    assert "<td>key.revoke</td>" in since_today and "<td>client.create</td>" not in since_today
    assert client.get("/audit", query_string={"to": "not a day"}).status_code == 400

    accounts.create(store, "viewer@school.rs", accounts.VIEWER, PASSWORD, now)
    viewer = app.test_client()
    log_in(viewer, "viewer@school.rs", PASSWORD)
    assert viewer.get("/audit").status_code == 403
    assert viewer.get("/providers").status_code == 200
    token = csrf_token(viewer.get("/providers").data)
    assert viewer.post("/providers/oneclick/pause", data={"hours": "1", "csrf_token": token}).status_code == 403
    token = csrf_token(client.get("/providers").data)
    assert client.post("/providers/nosuch/pause", data={"hours": "1", "csrf_token": token}).status_code == 404
    assert client.post("/providers/oneclick/pause", data={"hours": "5", "csrf_token": token}).status_code == 400


def test_phones_disabled_and_revoked_through_the_api_and_the_command_line_are_audited(run_cli, settings,
                                                                                     monkeypatch):
    import devices
    from sms_bulk_app import create_app
    from tests.conftest import settings_store

    phones = {"SMS_PROVIDERS": "android,oneclick", "PHONES_PRIVATE_TOKEN": "p" * 40}
    for name, value in phones.items():
        settings[name] = value
        monkeypatch.setenv(name, value)
    app = create_app(settings)
    store = app.extensions["sms_bulk_app"].store
    phone_settings = devices.PhoneSettings.of(app.extensions["sms_bulk_app"].config)
    first, second = (int(devices.register(store, phone_settings, f"Bearer {'p' * 40}", {"name": name}, "",
                                          time.time())["id"]) for name in ("Office", "Hall"))
    key_id, key = api_keys.create(store, "ops", ["admin"], None)
    log = Audit(store)
    answer = app.test_client().post(f"/api/v1/phones/{first}/disable", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    log.one("phone.disable", audit.API, f"key {key_id} (ops)", first)
    assert run_cli("phones", "revoke", str(second))[0] == 0
    log.one("phone.revoke", audit.CLI, f"cli ({audit._os_user()})", second)
    assert run_cli("phones", "revoke", str(second))[0] == 1  # revoked already: nothing changed
    log.none()
    assert settings_store(settings).device(second).revoked
