"""/api/v1: keys and scopes, clients, CSV import, mailings, statistics, manual sends, OpenAPI."""
from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

import api_keys
from sms_bulk_app import create_app
from tests.conftest import input_only, run_command, running_worker, settings_store, sqlite_only, wait_until

ALL_SCOPES = list(api_keys.SCOPES)


@pytest.fixture
def api(settings):
    app = create_app(settings)
    store = app.extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "test", ALL_SCOPES, None)
    return Api(app.test_client(), key, store)


class Api:
    def __init__(self, client, key, store):
        self.client, self.key, self.store = client, key, store

    def call(self, method: str, path: str, key: str | None = None, **kwargs):
        headers = kwargs.pop("headers", {}) | {"Authorization": f"Bearer {key or self.key}"}
        return self.client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)

    def add_client(self, phone: str, **fields):
        response = self.call("POST", "/clients", json={"phone": phone, **fields})
        assert response.status_code == 201, response.get_json()
        return response.get_json()


def iso(moment: datetime) -> str:
    return moment.isoformat()


def soon(minutes: float = 0) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


# --- keys ---

def test_no_key_wrong_key_revoked_key_answer_401(api):
    assert api.client.get("/api/v1/clients").status_code == 401
    assert api.call("GET", "/clients", key="sba_not-a-key").status_code == 401
    key_id, key = api_keys.create(api.store, "old", ["read"], None)
    assert api.call("GET", "/clients", key=key).status_code == 200
    api_keys.revoke(api.store, key_id)
    response = api.call("GET", "/clients", key=key)
    assert response.status_code == 401 and response.get_json()["message"] == "unknown or revoked API key"


def test_missing_scope_answers_403(api):
    _, reader = api_keys.create(api.store, "reader", ["read"], None)
    response = api.call("POST", "/clients", key=reader, json={"phone": "0641234567"})
    assert response.status_code == 403
    assert response.get_json() == {"status": "error", "message": "this key lacks the scope 'clients:write'"}


def test_daily_quota_answers_429_with_retry_after(api):
    _, key = api_keys.create(api.store, "small", ["read"], 3)
    assert [api.call("GET", "/clients", key=key).status_code for _ in range(3)] == [200] * 3
    response = api.call("GET", "/clients", key=key)
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 86400


def test_refused_requests_do_not_use_the_daily_quota(api):
    _, key = api_keys.create(api.store, "reader", ["read"], 3)
    refused = [api.call("POST", "/clients", key=key, json={"phone": "0641234567"}).status_code for _ in range(10)]
    assert refused == [403] * 10
    invalid = [api.call("GET", "/clients?limit=abc", key=key).status_code for _ in range(5)]
    assert invalid == [400] * 5
    assert [api.call("GET", "/clients", key=key).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_the_last_request_of_a_quota_is_served_once(api, settings):
    key_id, _ = api_keys.create(api.store, "busy", ["read"], 5)

    def served(_: int) -> bool:  # each thread its own store, as separate processes would have
        return api_keys.count_request(settings_store(settings), key_id) is None

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(served, range(40))) == 5


@sqlite_only
def test_keys_cli_prints_the_key_once_and_stores_only_its_hash(settings):
    created = run_command(settings, "keys", "create", "--name", "crm", "--scopes", "read,messages:send")
    assert created.returncode == 0, created.stderr
    key = created.stdout.split(": ")[-1].strip()
    assert key.startswith("sba_") and "cannot be shown again" in created.stderr
    listed = run_command(settings, "keys", "list")
    assert "crm" in listed.stdout and key not in listed.stdout
    db_bytes = (__import__("pathlib").Path(settings["DATA_DIR"]) / "sms_bulk_app.db").read_bytes()
    assert key.encode() not in db_bytes
    app = create_app(settings)
    assert app.test_client().get("/api/v1/clients", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert run_command(settings, "keys", "revoke", "1").returncode == 0
    assert app.test_client().get("/api/v1/clients", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    bad = run_command(settings, "keys", "create", "--name", "x", "--scopes", "root")
    assert bad.returncode == 2 and "scopes are any of" in bad.stderr


# --- clients ---

def test_client_is_stored_in_e164_with_derived_operator_code(settings):
    settings["DEFAULT_REGION"] = "RU"
    app = create_app(settings)
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "t", ALL_SCOPES, None)
    api = Api(app.test_client(), key, None)
    client = api.add_client("8 (900) 123-45-67", name="Иван", tags=["vip"], timezone="Asia/Yekaterinburg")
    assert (client["phone"], client["operator_code"], client["timezone"]) == ("+79001234567", "900",
                                                                                "Asia/Yekaterinburg")
    serbian = api.add_client("+381 64 123 4567")
    assert (serbian["operator_code"], serbian["timezone"]) == ("64", "Europe/Belgrade")


def test_client_errors(api):
    api.add_client("0641234567")
    duplicate = api.call("POST", "/clients", json={"phone": "+381641234567"})
    assert duplicate.status_code == 409 and duplicate.get_json()["message"] == "another client has this phone"
    bad = api.call("POST", "/clients", json={"phone": "12", "timezone": "Mars/Base", "tags": [""], "color": "red"})
    assert bad.status_code == 400
    errors = bad.get_json()["errors"]
    assert set(errors) == {"phone", "timezone", "tags.0", "color"}
    assert "not a valid phone number" in errors["phone"]
    assert api.call("POST", "/clients", data="nope", content_type="application/json").status_code == 400
    assert api.call("GET", "/clients/999").status_code == 404
    assert api.call("PATCH", "/clients/999", json={"name": "x"}).status_code == 404
    assert api.call("DELETE", "/clients/999").status_code == 404
    assert api.call("GET", "/clients?limit=0").get_json()["errors"] == {
        "limit": "Input should be greater than or equal to 1"}


def test_client_list_filters_and_pages(api):
    for i in range(12):
        api.add_client(f"06410000{i:02d}", tags=["a"] if i % 2 else ["b"], name=f"Klijent {i}")
    api.add_client("+79001234567", tags=["a"], operator_code="900")
    page = api.call("GET", "/clients?tag=a&limit=4&offset=4").get_json()
    assert page["total"] == 7 and len(page["items"]) == 3 and page["limit"] == 4
    assert api.call("GET", "/clients?operator_code=900").get_json()["total"] == 1
    assert api.call("GET", "/clients?tag=a&operator_code=64").get_json()["total"] == 6
    assert api.call("GET", "/clients?phone=1000003").get_json()["items"][0]["name"] == "Klijent 3"


@input_only
@pytest.mark.parametrize("query", ["abc", "%25", "_", "%25%25", "+", "%20", "(-)", "%C2%B2", "%D9%A3"])
def test_a_phone_filter_without_digits_is_a_400_naming_the_field(api, query):
    api.add_client("0641000001")
    answer = api.call("GET", f"/clients?phone={query}")
    assert (answer.status_code, answer.get_json()["errors"]) == (
        400, {"phone": "give a whole number or some of its digits: this has no digit 0-9"})


def test_an_empty_phone_filter_is_no_filter_like_an_empty_tag(api):
    for i in range(3):
        api.add_client(f"064100000{i}")
    assert [api.call("GET", f"/clients?{query}").get_json()["total"] for query in ("phone=", "tag=")] == [3, 3]


def test_client_update_and_delete(api):
    client = api.add_client("0641234567", tags=["x"])
    changed = api.call("PATCH", f"/clients/{client['id']}", json={"phone": "+79001234567", "tags": ["y", "z"]})
    assert changed.status_code == 200
    assert (changed.get_json()["operator_code"], changed.get_json()["tags"]) == ("900", ["y", "z"])
    assert api.call("DELETE", f"/clients/{client['id']}").status_code == 204
    assert api.call("GET", f"/clients/{client['id']}").status_code == 404


def test_csv_import_reports_created_updated_and_rejected_rows(api):
    api.add_client("0641000001", name="Stari")
    text = ("phone,name,tags,timezone,moyklass_user_id,color\n"
            "0641000001,Novi,a;b,,,red\n"
            "0641000002,Ana,a,Europe/Moscow,77,\n"
            "12,Broj,,,,\n"
            "0641000003,Vreme,,Nowhere/Else,,\n")
    response = api.call("POST", "/clients/import", data=text.encode(), content_type="text/csv")
    report = response.get_json()
    assert response.status_code == 200
    assert (report["created"], report["updated"], report["ignored_columns"]) == (1, 1, ["color"])
    assert [r["row"] for r in report["rejected"]] == [4, 5]
    assert "not a valid phone number" in report["rejected"][0]["reason"]
    assert "IANA time zone" in report["rejected"][1]["reason"]
    updated = api.call("GET", "/clients?phone=0641000001").get_json()["items"][0]
    assert (updated["name"], updated["tags"]) == ("Novi", ["a", "b"])
    no_phone = api.call("POST", "/clients/import", data=b"name\nAna\n", content_type="text/csv").get_json()
    assert no_phone["rejected"] == [{"row": 1, "reason": "the header has no phone column"}]


def test_import_clients_cli(settings, tmp_path):
    path = tmp_path / "clients.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phone", "name", "tags"])
        for i in range(300):
            writer.writerow([f"0641{i:06d}", f"Klijent {i}", "uvoz"])
        writer.writerow(["bad", "x", ""])
    result = run_command(settings, "import-clients", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "300 created, 0 updated, 1 rejected"
    assert "importing: 301/301" in result.stderr  # the progress lines


def test_sync_moyklass_pages_of_500_within_the_rate_limit(settings, moyklass):
    del settings["MOYKLASS_RATE_PER_SEC"]
    for user_id in range(1, 1202):
        moyklass.add_user(user_id, f"38164{1_000_000 + user_id:07d}" if user_id != 7 else None,
                          state=2 if user_id % 100 == 0 else 1)
    result = run_command(settings, "sync-moyklass")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1200 created, 0 updated, 1 skipped: no phone"
    assert moyklass.page_requests == [(0, 500), (500, 500), (1000, 500)]
    times = moyklass.request_log
    assert all(sum(1 for t in times if start <= t < start + 1) <= 7 for start in times)
    again = run_command(settings, "sync-moyklass", "--client-state-id", "2")
    assert again.stdout.strip() == "0 created, 12 updated"


# --- mailings ---

def mailing_body(**overrides):
    return {"start_at": iso(soon(60)), "end_at": iso(soon(120)), "text": "Zdravo {first_name}!",
            "filter": {"tags": ["a"]}} | overrides


@input_only
@pytest.mark.parametrize("overrides, field", [
    ({"end_at": iso(soon(30))}, "body"),  # before start
    ({"start_at": iso(soon(-120)), "end_at": iso(soon(-60))}, "body"),  # in the past
    ({"filter": {}}, "filter"),
    ({"filter": {"tags": [], "operator_codes": []}}, "filter"),
    ({"filter": {"all": True, "tags": ["a"]}}, "filter"),
    ({"window": {"from": "09:00", "to": "09:00"}}, "window"),
    ({"window": {"from": "9", "to": "21:00"}}, "window.from"),
    ({"text": "Hi {surname}"}, "text"),
    ({"start_at": "2026-12-01T10:00:00"}, "start_at"),  # no time zone
])
def test_mailing_validation_errors(api, overrides, field):
    response = api.call("POST", "/mailings", json=mailing_body(**overrides))
    assert response.status_code == 400
    assert field in response.get_json()["errors"]


def test_mailing_crud_and_409_once_started(api):
    created = api.call("POST", "/mailings", json=mailing_body(window={"from": "22:00", "to": "06:00"}))
    assert created.status_code == 201
    mailing = created.get_json()
    assert (mailing["state"], mailing["window"]) == ("scheduled", {"from": "22:00", "to": "06:00"})
    changed = api.call("PATCH", f"/mailings/{mailing['id']}", json={"text": "Novo {name}"})
    assert changed.status_code == 200 and changed.get_json()["text"] == "Novo {name}"
    assert api.call("PATCH", f"/mailings/{mailing['id']}", json={"end_at": iso(soon(10))}).status_code == 400
    import mailings
    mailings.start_due(api.store, time.time() + 3601)
    assert api.call("PATCH", f"/mailings/{mailing['id']}", json={"text": "x"}).status_code == 409
    assert api.call("DELETE", f"/mailings/{mailing['id']}").status_code == 409
    assert api.call("POST", f"/mailings/{mailing['id']}/cancel").get_json()["state"] == "canceled"
    assert api.call("DELETE", f"/mailings/{mailing['id']}").status_code == 409  # canceled, but it had started
    other = api.call("POST", "/mailings", json=mailing_body()).get_json()
    assert api.call("DELETE", f"/mailings/{other['id']}").status_code == 204
    assert api.call("GET", f"/mailings/{other['id']}").status_code == 404
    assert [m["id"] for m in api.call("GET", "/mailings").get_json()["items"]] == [mailing["id"]]


def parts_error(parts: int) -> dict[str, str]:
    return {"text": f"the text needs {parts} SMS parts, counted with {{name}} and {{first_name}} empty (the least"
                    " it can be); the SMS provider takes at most 6"}


def test_a_mailing_text_longer_than_the_provider_takes_is_refused(api):
    too_long = api.call("POST", "/mailings", json=mailing_body(text="Ж" * 500))  # UCS-2: 67 a part
    assert too_long.status_code == 400
    assert too_long.get_json()["errors"] == parts_error(8)
    fits = api.call("POST", "/mailings", json=mailing_body(text="{first_name}" + "Ж" * 402))  # 6 parts
    assert fits.status_code == 201
    patched = api.call("PATCH", f"/mailings/{fits.get_json()['id']}", json={"text": "{name} " + "Ж" * 402})
    assert patched.status_code == 400
    assert patched.get_json()["errors"] == parts_error(7)
    assert api.call("GET", f"/mailings/{fits.get_json()['id']}").get_json()["text"] == "{first_name}" + "Ж" * 402


def test_a_single_message_is_checked_like_a_mailing(api):
    """Before, a text of 15 parts was queued and then FAILED, and any event string was stored."""
    too_long = api.call("POST", "/messages", json={"phone": "0641234500", "text": "ж" * 1000})
    assert too_long.status_code == 400
    assert too_long.get_json()["errors"] == {"text": "the text needs 15 SMS parts; the SMS provider takes at most 6"}
    assert api.call("POST", "/messages", json={"phone": "0641234500", "text": "ж" * 402}).status_code == 202
    with_event = api.call("POST", "/messages", json={"phone": "0641234500", "text": "hi", "event": "user_new"})
    assert with_event.get_json()["errors"] == {"body": "event goes with moyklass_user_id, not with phone"}
    unknown = api.call("POST", "/messages", json={"moyklass_user_id": 5, "text": "hi", "event": "x y" + "A" * 5000})
    assert unknown.get_json()["errors"] == {"event": "not an event name (1-64 of A-Z a-z 0-9 _ . : -)"}
    named = api.call("POST", "/messages", json={"moyklass_user_id": 5, "text": "hi", "event": "not_an_event"})
    assert named.get_json()["errors"] == {"event": "MoyKlass has no event 'not_an_event'"}


def test_a_mailing_matching_no_client_finishes_under_a_worker(api, worker_settings):
    mailing = api.call("POST", "/mailings", json=mailing_body(start_at=iso(soon(-1)),
                                                              filter={"tags": ["nobody"]})).get_json()
    with running_worker(worker_settings):
        stats = wait_until(lambda: (s := api.call("GET", f"/mailings/{mailing['id']}/stats").get_json())
                           ["state"] == "finished" and s, what="the mailing to finish")
    assert (stats["total"], stats["progress"]) == (0, 1.0)


def test_openapi_document_and_swagger_ui_are_served_locally(api):
    document = api.client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/mailings/{mailing_id}/stats" in document["paths"]
    assert "MailingCreate" in document["components"]["schemas"]
    page = api.client.get("/docs/")
    assert page.status_code == 200 and b"swagger-ui-bundle.js" in page.data
    assert b"//" not in page.data.split(b"swagger-ui-bundle.js")[0].rsplit(b'src="', 1)[1]  # a local path
    assert api.client.get("/docs/swagger-ui-bundle.js").status_code == 200


def test_bodies_over_the_limits_answer_413(api):
    big_json = api.call("POST", "/clients", data=b'{"phone": "' + b"1" * 70_000 + b'"}',
                        content_type="application/json")
    assert big_json.status_code == 413
    assert big_json.get_json() == {"status": "error", "message": "the body is larger than 64 KiB"}
    csv_rows = b"phone\n" + b"0641234567\n" * 1_000_000  # 11 MB
    big_csv = api.call("POST", "/clients/import", data=csv_rows, content_type="text/csv")
    assert big_csv.status_code == 413
    assert big_csv.get_json()["message"] == "the body is larger than 10240 KiB"


NUL_BODIES = [
    ("POST", "/mailings", {"start_at": "2030-01-01T10:00:00Z", "end_at": "2030-01-01T12:00:00Z", "text": "x\u0000y",
                           "filter": {"all": True}}),
    ("POST", "/messages", {"phone": "0641234567", "text": "a\u0000b"}),
    ("POST", "/clients", {"phone": "0641234567", "name": "A\u0000B"}),
    ("POST", "/templates", {"name": "nul", "text": "a\u0000b {CODE}"}),
]


@pytest.mark.parametrize("method, path, body", NUL_BODIES)
def test_a_nul_character_in_a_body_is_refused_400_on_either_database(api, method, path, body):
    """PostgreSQL text cannot hold NUL: it answered 500 there (and SQLite kept it) before."""
    response = api.call(method, path, json=body)
    assert response.status_code == 400
    assert response.get_json()["message"] == ("the body holds a NUL character (\\u0000): no text kept here"
                                              " may hold one")
    assert api.store.table_counts()["clients"] == api.store.table_counts()["mailings"] == 0


@pytest.mark.parametrize("query", ["tag=a%00b", "operator_code=%00", "phone=064%001"])
def test_a_nul_character_in_a_query_is_refused_400(api, query):
    response = api.call("GET", f"/clients?{query}")
    assert response.status_code == 400
    assert response.get_json()["message"] == "the query holds a NUL character (%00): no text kept here may hold one"


def test_a_webhook_with_a_nul_character_is_refused_and_nothing_kept(api):
    response = api.client.post("/webhook", json={"event": "sub_lessons_left", "object": {"userId": 1, "x": "\u0000"}})
    assert response.status_code == 400 and "NUL" in response.get_json()["message"]
    assert api.store.counts()["QUEUED"] == 0
