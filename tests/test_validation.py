"""Input that cannot be kept is refused with a 400 (or 422) before anything is written: datetimes
out of range, ids past SQLite's integers, event names that are not plain names, JSON nested too
deep, lone surrogates, and phone numbers that cannot receive SMS."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import api_keys
from phones import InvalidPhone, to_e164
from sms_bulk_app import create_app
from store import FAILED


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def call(app):
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "test", list(api_keys.SCOPES), None)
    client = app.test_client()

    def call(method: str, path: str, **kwargs):
        return client.open(f"/api/v1{path}", method=method, headers={"Authorization": f"Bearer {key}"}, **kwargs)

    return call


def message_count(app) -> int:
    return sum(app.extensions["sms_bulk_app"].store.counts().values())


def in_an_hour(hours: float = 1) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


MOMENT_ERROR = "must be between 2000-01-01 and 2100-01-01 UTC"


# --- datetimes ---

def test_patching_end_at_to_year_10000_in_utc_is_refused_and_nothing_is_written(call):
    created = call("POST", "/mailings", json={"start_at": in_an_hour(1), "end_at": in_an_hour(2),
                                              "text": "Zdravo", "filter": {"all": True}}).get_json()

    response = call("PATCH", f"/mailings/{created['id']}", json={"end_at": "9999-12-31T23:30:00-01:00"})

    assert response.status_code == 400
    assert response.get_json() == {"status": "error", "message": "invalid request", "errors": {"end_at": MOMENT_ERROR}}
    listed = call("GET", "/mailings")
    assert listed.status_code == 200
    stored = {field: value for field, value in created.items() if field != "estimate"}  # the creation's answer only
    assert listed.get_json()["items"] == [stored]
    assert call("POST", f"/mailings/{created['id']}/cancel").get_json()["state"] == "canceled"


@pytest.mark.parametrize("field, value", [
    ("start_at", "1999-12-31T23:59:59+00:00"),
    ("start_at", "0001-01-01T00:30:00+01:00"),  # year 0 in UTC
    ("end_at", "2100-01-01T00:00:00+00:00"),
    ("end_at", "9999-12-31T23:30:00-01:00"),
])
def test_mailing_datetimes_out_of_range_are_refused(call, field, value):
    body = {"start_at": in_an_hour(1), "end_at": in_an_hour(2), "text": "Zdravo", "filter": {"all": True}}
    response = call("POST", "/mailings", json=body | {field: value})
    assert response.status_code == 400
    assert response.get_json()["errors"] == {field: MOMENT_ERROR}
    assert call("GET", "/mailings").get_json()["items"] == []


# --- the webhook envelope ---

def post_webhook(app, body: bytes):
    return app.test_client().post("/webhook", data=body, content_type="application/json")


EVENT_ERROR = "event must be a plain name: 1 to 64 letters, digits, '_', '.', ':' or '-', such as sub_lessons_left"
SURROGATE_ERROR = "the body holds a lone surrogate (such as \\ud800): it is not valid Unicode text"


@pytest.mark.parametrize("body, message", [
    (b'{"object": {"userId": 9223372036854775808}}',
     "object.userId must be a positive integer up to 9223372036854775807"),
    (b'{"event": "\\ud800", "object": {"userId": 1}}', SURROGATE_ERROR),
    (b'{"event": "user_new\\t", "object": {"userId": 1}}', EVENT_ERROR),
    (b'{"event": "user_new\\u0000", "object": {"userId": 1}}',
     "the body holds a NUL character (\\u0000): no text kept here may hold one"),
    (b'{"event": "user_new\\n", "object": {"userId": 1}}', EVENT_ERROR),
    (b'{"event": "", "object": {"userId": 1}}', EVENT_ERROR),
    (b'{"event": "' + b"e" * 65 + b'", "object": {"userId": 1}}', EVENT_ERROR),
    (b'{"event": 5, "object": {"userId": 1}}', EVENT_ERROR),
    (b"[" * 30_000 + b"]" * 30_000, "the body nests deeper than 32 levels"),
    (b'{"object": {"userId": 1, "x": ' + b"[" * 32 + b"]" * 32 + b"}}", "the body nests deeper than 32 levels"),
    (b'{"object": {"userId": 1, "name": "Ana \\udc00"}}', SURROGATE_ERROR),
    (b'{"object": {"userId": 1, "\\ud800": 1}}', SURROGATE_ERROR),
])
def test_webhook_envelopes_that_cannot_be_kept_answer_400(app, oneclick, body, message):
    response = post_webhook(app, body)
    assert response.status_code == 400
    assert response.get_json() == {"status": "error", "message": message}
    assert message_count(app) == 0
    assert oneclick.messages == []


def test_webhook_largest_user_id_and_31_levels_are_accepted(app, moyklass):
    body = b'{"object": {"userId": 9223372036854775807, "x": ' + b"[" * 30 + b"]" * 30 + b"}}"
    response = post_webhook(app, body)
    assert response.status_code == 404  # accepted and journaled; MoyKlass has no such user
    assert response.get_json()["message"] == "MoyKlass has no user 9223372036854775807"


# --- numbers JSON does not have ---

@pytest.mark.parametrize("number, message", [
    (b"NaN", "the body holds NaN: JSON has no such number"),
    (b"Infinity", "the body holds Infinity: JSON has no such number"),
    (b"-Infinity", "the body holds -Infinity: JSON has no such number"),
    (b"1e999", "the body holds a number too large to keep (such as 1e999)"),
    (b"-1e999", "the body holds a number too large to keep (such as 1e999)"),
])
def test_bodies_with_a_number_that_is_not_finite_answer_400(app, call, oneclick, number, message):
    webhook = post_webhook(app, b'{"event": "user_new", "object": {"userId": 1, "x": [' + number + b"]}}")
    assert (webhook.status_code, webhook.get_json()) == (400, {"status": "error", "message": message})
    api = call("POST", "/messages", data=b'{"phone": "0641234567", "text": "x", "x": ' + number + b"}",
               content_type="application/json")
    assert (api.status_code, api.get_json()) == (400, {"status": "error", "message": message})
    assert message_count(app) == 0
    assert oneclick.messages == []


def test_bodies_with_the_largest_finite_number_are_read(app, call):
    answer = call("POST", "/messages", data=b'{"phone": "0641234567", "text": "x", "extra": 1.7e308}',
                  content_type="application/json")
    assert answer.status_code == 400  # read as JSON, then refused by the schema for its unknown field
    assert "extra" in answer.get_json()["errors"]


# --- time zones ---

@pytest.mark.parametrize("name", ["localtime", "Factory", "posixrules", "Mars/Base", "europe/belgrade",
                                  "posix/Europe/Belgrade", "../zoneinfo/UTC", ""])
def test_time_zones_outside_the_iana_list_are_refused(call, name):
    answer = call("POST", "/clients", json={"phone": "0641234567", "timezone": name})
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == {"timezone": f"{name!r} is not an IANA time zone such as Europe/Belgrade"}
    assert call("GET", "/clients").get_json()["total"] == 0


@pytest.mark.parametrize("name", ["Europe/Belgrade", "UTC", "Etc/GMT-14", "America/Argentina/Buenos_Aires"])
def test_iana_time_zones_are_accepted(call, name):
    answer = call("POST", "/clients", json={"phone": "0641234567", "timezone": name})
    assert (answer.status_code, answer.get_json()["timezone"]) == (201, name)


# --- lone surrogates in API bodies ---

@pytest.mark.parametrize("path, body", [
    ("/clients", b'{"phone": "0641234567", "name": "Ana \\ud800"}'),
    ("/mailings", b'{"start_at": "2030-01-01T10:00:00+00:00", "end_at": "2030-01-01T11:00:00+00:00",'
                  b' "text": "Zdravo \\udfff", "filter": {"all": true}}'),
    ("/messages", b'{"phone": "0641234567", "text": "\\ud83d"}'),
])
def test_api_bodies_with_a_lone_surrogate_answer_400(app, call, path, body):
    response = call("POST", path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"status": "error", "message": SURROGATE_ERROR}
    assert call("GET", "/clients").get_json()["total"] == 0
    assert call("GET", "/mailings").get_json()["items"] == []
    assert message_count(app) == 0


# --- numbers that cannot receive SMS ---

@pytest.mark.parametrize("raw, message", [
    ("011 3234567", "+381*******67 is a landline number: it cannot receive SMS"),
    ("+381900123456", "+381*******56 is a premium-rate number: it cannot receive SMS"),
    ("0800 123456", "+381*******56 is a toll-free number: it cannot receive SMS"),
])
def test_numbers_that_cannot_receive_sms_are_refused(raw, message):
    with pytest.raises(InvalidPhone) as refused:
        to_e164(raw, "RS")
    assert str(refused.value) == message


def test_mobile_numbers_pass(call):
    assert to_e164("064 123 4567", "RS") == "+381641234567"
    assert to_e164("+7 900 123-45-67", "RS") == "+79001234567"


def test_api_refuses_a_landline_with_400(call):
    response = call("POST", "/clients", json={"phone": "011 3234567"})
    assert response.status_code == 400
    assert response.get_json()["errors"] == {"phone": "+381*******67 is a landline number: it cannot receive SMS"}
    response = call("POST", "/messages", json={"phone": "+381900123456", "text": "x"})
    assert response.get_json()["errors"] == {"phone": "+381*******56 is a premium-rate number: it cannot receive SMS"}


def test_import_rejects_a_landline_row(call):
    text = "phone,name\n0641000001,Ana\n011 3234567,Škola\n"
    response = call("POST", "/clients/import", data=text.encode(), content_type="text/csv")
    assert response.get_json()["created"] == 1
    assert response.get_json()["rejected"] == [
        {"row": 3, "reason": "phone: +381*******67 is a landline number: it cannot receive SMS"}]


def test_webhook_for_a_user_with_a_landline_answers_422(app, moyklass, oneclick):
    moyklass.add_user(1001, "381113234567")
    response = app.test_client().post("/webhook", json={"event": "sub_lessons_left", "object": {"userId": 1001}})
    assert response.status_code == 422
    body = response.get_json()
    assert body["message"] == "+381*******67 is a landline number: it cannot receive SMS"
    assert app.extensions["sms_bulk_app"].store.message(body["id"])["status"] == FAILED
    assert oneclick.messages == []


def test_ids_and_flags_are_json_integers_and_booleans_not_lookalikes(call):
    """Before, "12", 12.0 and true were taken as ids and "yes" or 1 as true."""
    for lookalike in ("12", 12.0, True):
        answer = call("POST", "/clients", json={"phone": "0641234500", "moyklass_user_id": lookalike})
        assert answer.status_code == 400 and set(answer.get_json()["errors"]) == {"moyklass_user_id"}, lookalike
    for lookalike in ("yes", 1):
        answer = call("POST", "/mailings", json={
            "start_at": "2099-01-01T09:00:00+01:00", "end_at": "2099-01-02T09:00:00+01:00", "text": "Zdravo",
            "filter": {"all": lookalike}})
        assert answer.status_code == 400 and set(answer.get_json()["errors"]) == {"filter.all"}, lookalike
    assert call("POST", "/clients", json={"phone": "0641234500", "moyklass_user_id": 12}).status_code == 201
