"""The console's pages of messages, mailings, clients, templates and API keys (Flask's test client):
what each role may do, CSRF on every action, and that each action is the API's own."""
from __future__ import annotations

import io
import re
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from flask.testing import FlaskClient

import api_keys
import mailings
from console import accounts
from store import CANCELED, FAILED, QUEUED, STARTED
from tests.test_console_auth import PASSWORD, csrf_token, log_in

ZONE = ZoneInfo("Europe/Belgrade")


@pytest.fixture
def people(app: Flask) -> dict[str, FlaskClient]:
    """A logged-in test client of each role."""
    store = app.extensions["sms_bulk_app"].store
    logged_in = {}
    for role in accounts.ROLES:
        accounts.create(store, f"{role}@school.rs", role, PASSWORD, time.time())
        client = app.test_client()
        log_in(client, f"{role}@school.rs", PASSWORD)
        logged_in[role] = client
    return logged_in


def token(client: FlaskClient) -> str:
    return csrf_token(client.get("/").data)


def local(moment: datetime) -> str:
    return moment.astimezone(ZONE).strftime("%Y-%m-%dT%H:%M")


def store_of(app: Flask):
    return app.extensions["sms_bulk_app"].store


def add_clients(app: Flask) -> None:
    store = store_of(app)
    for phone, name in (("+381641000001", "Ana Ilić"), ("+381641000002", "Marko Petrović")):
        store.create_client({"phone": phone, "operator_code": "64", "timezone": "Europe/Belgrade", "name": name,
                             "moyklass_user_id": None, "tags": ["robotika"]})


# (method, path, the least role, form) of every action: refused below the role, refused without CSRF.
ACTIONS = [
    ("post", "/messages/1/resend", "operator"),
    ("post", "/mailings", "operator"),
    ("post", "/mailings/preview", "operator"),
    ("post", "/mailings/1/cancel", "operator"),
    ("post", "/mailings/1/retry-failed", "operator"),
    ("post", "/clients/1", "operator"),
    ("post", "/clients/import", "operator"),
    ("post", "/templates", "operator"),
    ("post", "/templates/1", "operator"),
    ("post", "/templates/1/approve", "admin"),
    ("post", "/keys", "admin"),
    ("post", "/keys/1/revoke", "admin"),
]
PAGES = [("/messages", "viewer"), ("/messages/1", "viewer"), ("/mailings", "viewer"), ("/mailings/new", "operator"),
         ("/mailings/1", "viewer"), ("/mailings/1/messages.csv", "viewer"), ("/clients", "viewer"),
         ("/clients/1", "viewer"), ("/clients/import", "operator"), ("/templates", "viewer"),
         ("/templates/new", "operator"), ("/templates/1", "viewer"), ("/keys", "admin")]


@pytest.fixture
def data(app: Flask) -> None:
    """Message 1 (FAILED), mailing 1 (started), client 1, template 1 (a draft), key 1."""
    store = store_of(app)
    add_clients(app)
    store.enqueue("api", 3600, phone="+381641000001", text="Zdravo")
    with store.transaction() as db:
        db.execute("UPDATE messages SET status = ?, last_error = 'refused' WHERE id = 1", (FAILED,))
    now = datetime.now(ZONE)
    with app.test_request_context():
        from models import MailingCreate
        mailings.create(store, MailingCreate.model_validate(
            {"start_at": now + timedelta(days=1), "end_at": now + timedelta(days=2), "text": "Zdravo",
             "filter": {"all": True}}))
    import templates
    templates.create(store, "otp", "Kod {CODE}", "test", frozenset())
    api_keys.create(store, "crm", ["read"], 100)


@pytest.mark.parametrize("path, least", PAGES)
def test_every_page_answers_each_role_as_its_role_allows(people, data, path, least):
    for role, client in people.items():
        allowed = accounts.ROLES.index(role) >= accounts.ROLES.index(least)
        answer = client.get(path)
        body = answer.get_data()  # read whole: the CSV is streamed
        assert answer.status_code == (200 if allowed else 403), (role, path, body[:300])


@pytest.mark.parametrize("method, path, least", ACTIONS)
def test_every_action_needs_its_role_and_its_csrf_token(app, people, data, method, path, least):
    for role, client in people.items():
        if accounts.ROLES.index(role) < accounts.ROLES.index(least):
            assert client.post(path, data={"csrf_token": token(client)}).status_code == 403, (role, path)
    allowed = people[least]
    refused = allowed.post(path, data={})
    assert refused.status_code == 400 and b"did not come from this site" in refused.data
    assert app.test_client().post(path).status_code in (302, 400)  # no session: no action either


def test_messages_are_found_by_a_phone_typed_in_any_form_and_resent(app, people):
    store = store_of(app)
    first = store.enqueue("api", 3600, phone="+381641234567", text="Prva")
    store.enqueue("api", 3600, phone="+381651111111", text="Druga")
    with store.transaction() as db:
        db.execute("UPDATE messages SET status = ?, attempts = 8, last_error = 'gateway said no',"
                   " provider = 'oneclick' WHERE id = ?", (FAILED, first))
    viewer, operator = people["viewer"], people["operator"]
    for typed in ("064 123 4567", "+381 64 123-4567", "00381641234567", "0641234567"):
        page = viewer.get("/messages", query_string={"phone": typed}).data.decode()
        assert "+381641234567" in page and "+381651111111" not in page, typed
    assert "+381651111111" in viewer.get("/messages", query_string={"status": QUEUED}).data.decode()
    bad = viewer.get("/messages", query_string={"phone": "12"})
    assert bad.status_code == 400 and b"not a phone number" in bad.data
    detail = viewer.get(f"/messages/{first}").data.decode()
    assert "gateway said no" in detail and "oneclick" in detail and 'id="resend"' not in detail  # viewer
    assert 'id="resend"' in operator.get(f"/messages/{first}").data.decode()
    assert viewer.post(f"/messages/{first}/resend", data={"csrf_token": token(viewer)}).status_code == 403
    resent = operator.post(f"/messages/{first}/resend", data={"csrf_token": token(operator)})
    assert resent.status_code == 302 and store.message(first)["status"] == QUEUED
    assert store.message(first)["attempts"] == 0
    again = operator.post(f"/messages/{first}/resend", data={"csrf_token": token(operator)})
    assert again.status_code == 409  # QUEUED now: nothing to resend


def mailing_form(client: FlaskClient, **changes: str) -> dict[str, str]:
    now = datetime.now(ZONE)
    return {"csrf_token": token(client), "text": "Zdravo {first_name}, upis počinje.", "tags": "robotika",
            "start_at": local(now - timedelta(minutes=1)), "end_at": local(now + timedelta(hours=2))} | changes


def test_a_mailing_is_previewed_created_cancelled_and_exported(app, people):
    add_clients(app)
    operator, viewer = people["operator"], people["viewer"]
    preview = operator.post("/mailings/preview", data=mailing_form(operator), headers={"X-Fragment": "1"})
    fragment = preview.data.decode()
    assert preview.status_code == 200 and "<html" not in fragment
    assert "Zdravo Ana, upis počinje." in fragment and "UCS-2" in fragment
    assert re.search(r'id="preview-recipients">2<', fragment)
    assert "Zdravo Ana, upis pocinje." in fragment  # the transliteration suggestion
    invalid = operator.post("/mailings", data=mailing_form(operator, tags="", end_at="2001-01-01T00:00"))
    assert invalid.status_code == 400 and b"empty filter" in invalid.data
    created = operator.post("/mailings", data=mailing_form(operator))
    assert created.status_code == 302
    mailing_id = int(created.headers["Location"].rsplit("/", 1)[1])
    store = store_of(app)
    assert store.mailing(mailing_id).text == "Zdravo {first_name}, upis počinje."
    mailings.start_due(store, time.time())
    assert store.mailing(mailing_id).state == STARTED
    page = viewer.get(f"/mailings/{mailing_id}").data.decode()
    assert 'http-equiv="refresh"' in page and "0 %" in page and 'id="cancel"' not in page
    listing = viewer.get("/mailings").data.decode()
    assert f'id="mailing-{mailing_id}"' in listing and "<progress" in listing
    csv = viewer.get(f"/mailings/{mailing_id}/messages.csv")
    assert csv.mimetype == "text/csv" and csv.data.decode().count("'+38164100000") == 2
    cancelled = operator.post(f"/mailings/{mailing_id}/cancel", data={"csrf_token": token(operator)})
    assert cancelled.status_code == 302 and store.counts()[CANCELED] == 2
    retried = operator.post(f"/mailings/{mailing_id}/retry-failed", data={"csrf_token": token(operator)})
    assert retried.status_code == 409


def test_clients_are_filtered_edited_and_imported(app, people):
    add_clients(app)
    operator, viewer = people["operator"], people["viewer"]
    found = viewer.get("/clients", query_string={"phone": "064 100 0002"}).data.decode()
    assert "Marko Petrović" in found and "Ana Ilić" not in found
    assert "Ana Ilić" in viewer.get("/clients", query_string={"tag": "robotika"}).data.decode()
    form = {"csrf_token": token(operator), "phone": "+381641000001", "name": "Ana Jović", "tags": "robotika, vip",
            "timezone": "Europe/Belgrade", "operator_code": "64", "moyklass_user_id": ""}
    assert operator.post("/clients/1", data=form).status_code == 200
    assert store_of(app).client(1)["name"] == "Ana Jović" and store_of(app).client(1)["tags"] == ["robotika", "vip"]
    taken = operator.post("/clients/1", data=form | {"phone": "064 100 0002"})
    assert taken.status_code == 409
    bad_zone = operator.post("/clients/1", data=form | {"timezone": "Mars/Olympus"})
    assert bad_zone.status_code == 400 and b"IANA" in bad_zone.data
    csv = "phone;name;tags\n0641000003;Jelena;robotika\n12;Nije broj;\n0641000001;Ana;robotika\n".encode("cp1250")
    imported = operator.post("/clients/import", content_type="multipart/form-data",
                             data={"csrf_token": token(operator), "file": (io.BytesIO(csv), "clients.csv")})
    page = imported.data.decode()
    assert imported.status_code == 200
    assert re.search(r'id="import-created">1<', page) and re.search(r'id="import-updated">1<', page)
    assert re.search(r'id="import-rejected">1<', page) and "not a valid phone number" in page


def test_a_large_csv_is_taken_by_the_import_page_only(app, people):
    operator = people["operator"]
    rows = "".join(f"06410{n:05d},Ime {n},t\n" for n in range(6000))  # ~120 KiB: over the app's 64 KiB
    imported = operator.post("/clients/import", content_type="multipart/form-data",
                             data={"csrf_token": token(operator),
                                   "file": (io.BytesIO(("phone,name,tags\n" + rows).encode()), "big.csv")})
    assert imported.status_code == 200 and re.search(r'id="import-created">6000<', imported.data.decode())
    big = operator.post("/templates", data={"csrf_token": token(operator), "name": "x", "text": "y" * 70_000})
    assert big.status_code == 413


def test_templates_are_measured_drafted_by_an_operator_and_approved_by_an_admin(app, people):
    operator, admin, viewer = people["operator"], people["admin"], people["viewer"]
    measured = viewer.post("/texts/measure", data={"csrf_token": token(viewer), "text": "Čas je sutra u {TIME}."})
    fragment = measured.data.decode()
    assert 'id="counter-encoding">UCS-2<' in fragment and "Cas je sutra u {TIME}." in fragment
    assert "GSM-7" in viewer.post("/texts/measure", data={"csrf_token": token(viewer), "text": "Hello"}).data.decode()
    broken = viewer.post("/texts/measure", data={"csrf_token": token(viewer), "text": "{unknown}"}).data.decode()
    assert "unknown placeholder" in broken
    created = operator.post("/templates", data={"csrf_token": token(operator), "name": "reminder",
                                                "text": "Čas je sutra u {TIME}."})
    assert created.status_code == 302
    template_id = int(created.headers["Location"].rsplit("/", 1)[1])
    store = store_of(app)
    assert store.template(template_id).approved_version is None  # an operator's: a draft
    assert operator.post("/templates", data={"csrf_token": token(operator), "name": "reminder",
                                             "text": "x"}).status_code == 400  # the name is taken
    assert 'id="approve"' not in operator.get(f"/templates/{template_id}").data.decode()
    assert 'id="approve"' in admin.get(f"/templates/{template_id}").data.decode()
    operator.post(f"/templates/{template_id}", data={"csrf_token": token(operator), "text": "Cas je sutra u {TIME}."})
    stale = admin.post(f"/templates/{template_id}/approve", data={"csrf_token": token(admin), "version": "1"})
    assert stale.status_code == 409  # version 2 was written meanwhile
    approved = admin.post(f"/templates/{template_id}/approve", data={"csrf_token": token(admin), "version": "2"})
    assert approved.status_code == 302 and store.template(template_id).approved_version == 2
    versions = store.template_versions(template_id)
    assert versions[1].approved_by == "console:admin@school.rs"
    assert versions[0].created_by == "console:operator@school.rs"
    admin.post(f"/templates/{template_id}", data={"csrf_token": token(admin), "text": "Sutra u {TIME}."})
    assert store.template(template_id).approved_version == 3  # an admin's version is approved at once


def test_api_keys_are_created_shown_once_and_revoked(app, people):
    admin = people["admin"]
    created = admin.post("/keys", data={"csrf_token": token(admin), "name": "crm", "scopes": ["read", "mailings:write"],
                                        "daily_quota": "500"})
    assert created.status_code == 201
    key = re.search(rb'id="new-key">([^<]+)<', created.data).group(1).decode()
    store = store_of(app)
    found = api_keys.find(store, key)
    assert found.scopes == frozenset({"read", "mailings:write"})
    assert key not in admin.get("/keys").data.decode()  # shown once
    assert app.test_client().get("/api/v1/mailings", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert admin.post("/keys", data={"csrf_token": token(admin), "name": "", "scopes": ["read"]}).status_code == 400
    assert admin.post(f"/keys/{found.id}/revoke", data={"csrf_token": token(admin)}).status_code == 302
    assert api_keys.find(store, key) is None
    assert app.test_client().get("/api/v1/mailings", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    # Audited as the API's and the command line's changes are, with the admin as the actor.
    entries = store.audit_entries("admin@school.rs", None, None, None, None, 10)
    assert [(entry.action, entry.object_id) for entry in entries][:2] == [("key.revoke", str(found.id)),
                                                                          ("key.create", str(found.id))]


def test_the_pages_speak_russian(people, data):
    client = people["operator"]
    client.post("/language", data={"lang": "ru", "next": "/", "csrf_token": token(client)})
    for path, word in (("/messages", "Сообщения"), ("/mailings", "Рассылки"), ("/mailings/new", "Новая рассылка"),
                       ("/clients", "Клиенты"), ("/templates", "Шаблоны")):
        assert word in client.get(path).data.decode(), path


@pytest.mark.parametrize("method, path, role", [
    ("get", "/messages/9223372036854775808", "viewer"),  # MAX_ID + 1
    ("get", "/messages/9223372036854775807", "viewer"),  # MAX_ID: kept by the database, but no such message
    ("get", "/clients/99999999999999999999999", "viewer"),
    ("get", "/mailings/99999999999999999999999", "viewer"),
    ("post", "/mailings/99999999999999999999999/cancel", "operator"),
    ("post", "/templates/99999999999999999999999/approve", "admin"),
])
def test_an_id_beyond_64_bits_is_no_such_page(people, data, method, path, role):
    client = people[role]
    answer = getattr(client, method)(path, data={"csrf_token": token(client)} if method == "post" else None,
                                     headers={"Accept": "text/html,application/xhtml+xml"})  # a browser's
    assert answer.status_code == 404 and b"There is no such page" in answer.data


LONG = "9" * 10_000
BAD_PARAMETERS = [  # (path, its query, the role, what the 400 page says)
    ("/messages", {"page": "99999999999999999999"}, "viewer", "“page” must be a whole number from 1 to 1000000."),
    ("/messages", {"page": LONG}, "viewer", "“page” must be a whole number"),
    ("/messages", {"page": "²"}, "viewer", "“page” must be a whole number"),  # str.isdigit takes it, int not
    ("/messages", {"page": "0"}, "viewer", "“page” must be a whole number"),
    ("/clients", {"page": "99999999999999999999"}, "viewer", "“page” must be a whole number"),
    ("/clients", {"page": LONG}, "viewer", "“page” must be a whole number"),
    ("/clients", {"page": "²"}, "viewer", "“page” must be a whole number"),
    ("/mailings/1", {"page": "99999999999999999999"}, "viewer", "“page” must be a whole number"),
    ("/mailings/1", {"page": LONG}, "viewer", "“page” must be a whole number"),
    ("/messages", {"mailing": "²"}, "viewer", "“mailing” must be a whole number from 1 to 9223372036854775807."),
    ("/messages", {"mailing": "99999999999999999999"}, "viewer", "“mailing” must be a whole number"),
    ("/audit", {"before": "99999999999999999999"}, "admin", "“before” must be a whole number"),
    ("/audit", {"to": "9999-12-31"}, "admin",
     "“to” must be a date such as 2026-05-01, from 2000-01-01 to 2100-12-31."),
    ("/audit", {"from": "nonsense"}, "admin", "“from” must be a date"),
    ("/messages", {"to": "9999-12-31"}, "viewer", "“to” must be a date such as 2026-05-01"),
    ("/messages", {"from": "0001-01-01", "to": "0001-01-02"}, "viewer", "“to” must be a date"),
    ("/messages", {"from": "2026-13-45"}, "viewer", "“from” must be a date"),  # no longer the default days
]


@pytest.mark.parametrize("path, query, role, says", BAD_PARAMETERS)
def test_a_number_or_day_the_console_cannot_take_is_a_400_page_naming_it(people, data, path, query, role, says):
    answer = people[role].get(path, query_string=query)
    page = answer.data.decode()
    assert answer.status_code == 400 and says in page and 'class="card narrow error"' in page, page[-600:]


def test_numbers_and_days_in_range_are_taken(people, data):
    viewer = people["viewer"]
    for path in ("/messages?page=2&mailing=1&from=2026-01-01&to=2026-01-31", "/clients?page=3", "/mailings/1?page=2"):
        assert viewer.get(path).status_code == 200, path
    assert people["admin"].get("/audit?before=5&from=2000-01-01&to=2100-12-31").status_code == 200


def test_a_form_number_the_console_cannot_take_is_a_400_page(people, data):
    admin = people["admin"]
    approve = admin.post("/templates/1/approve", data={"csrf_token": token(admin),
                                                       "version": "99999999999999999999999"})
    assert approve.status_code == 400 and "“version” must be a whole number" in approve.data.decode()
    key = admin.post("/keys", data={"csrf_token": token(admin), "name": "crm2", "scopes": ["read"],
                                    "daily_quota": "²"})
    assert key.status_code == 400 and b"a daily quota from 1 to 10000000" in key.data


def test_a_message_shows_an_error_only_when_it_had_one(app, people):
    store = store_of(app)
    sent = store.enqueue("api", 3600, phone="+381641234567", text="Prva")
    failed = store.enqueue("api", 3600, phone="+381641234567", text="Druga")
    with store.transaction() as db:  # a provider's code of success ("0") stays with a SENT message
        db.execute("UPDATE messages SET status = 'SENT', error_code = '0', last_error = NULL, provider = 'oneclick'"
                   " WHERE id = ?", (sent,))
        db.execute("UPDATE messages SET status = ?, error_code = '21', last_error = 'refused by the operator'"
                   " WHERE id = ?", (FAILED, failed))
    viewer = people["viewer"]
    shown = viewer.get(f"/messages/{sent}").data.decode()
    assert "Last error" not in shown and "[0]" not in shown and 'class="bad"' not in shown
    shown = viewer.get(f"/messages/{failed}").data.decode()
    assert '<li class="bad">Last error: [21] refused by the operator</li>' in shown


def test_the_event_texts_hint_shows_the_setting_name_literally(people):
    viewer = people["viewer"]
    assert "settings (SMS_TEXT_&lt;EVENT&gt;)" in viewer.get("/templates").data.decode()
    viewer.post("/language", data={"lang": "ru", "next": "/", "csrf_token": token(viewer)})
    assert "настройки (SMS_TEXT_&lt;EVENT&gt;)" in viewer.get("/templates").data.decode()


@pytest.mark.parametrize("phone", ["%", "abc", "_"])
def test_a_phone_filter_without_a_digit_is_refused_as_the_api_refuses_it(app, people, phone):
    add_clients(app)
    answer = people["viewer"].get("/clients", query_string={"phone": phone})
    page = answer.data.decode()
    assert answer.status_code == 400 and "Ana Ilić" not in page
    assert "“phone”: give a whole number or some of its digits: this has no digit 0-9." in page


def test_an_action_that_changes_nothing_is_not_audited(app, people, data):
    admin, operator, store = people["admin"], people["operator"], store_of(app)
    for _ in range(2):
        answer = admin.post("/templates/1/approve", data={"csrf_token": token(admin), "version": "1"})
        assert answer.status_code == 302 and store.template(1).approved_version == 1
    for _ in range(2):
        answer = operator.post("/mailings/1/cancel", data={"csrf_token": token(operator)})
        assert answer.status_code == 302 and answer.headers["Location"] == "/mailings/1"
    assert "canceled" in operator.get("/mailings/1").data.decode()
    entries = store.audit_entries(None, None, None, None, None, 10)
    assert [(entry.action, entry.object_id) for entry in entries if entry.action != "login"] == [
        ("mailing.cancel", "1"), ("template.approve", "1")]
