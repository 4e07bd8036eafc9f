"""Twilio: the provider against the fake Twilio over HTTP, both held to Twilio's published spec (the
subset in tests/fixtures); the status callback's signature and mapping; and a message sent by the
real worker and reported DELIVERED by the fake's signed callback."""
from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode

import pytest
from werkzeug.serving import make_server

from callbacks import twilio_signature, valid_twilio_signature
from config import ConfigError, load_config
from http_client import HttpAnswer, KeepAliveClient
from providers import Delivery, DeliveryReport, Outcome, Shared, create_provider
from providers.twilio import TwilioProvider
from sms_bulk_app import create_app, services
from store import DELIVERED, FAILED, SENT, UNDELIVERED
from tests.conftest import free_port, running_worker, settings_store, wait_until
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM, SPEC, SUBSET, FakeTwilio, request_problems, sign

PUBLIC_URL = "https://sms.example.com"
SERVICE_SID = "MG" + "fedcba9876543210" * 2
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


@pytest.fixture
def twilio():
    fake = FakeTwilio().start()
    yield fake
    fake.stop()


def make_provider(twilio: FakeTwilio, public_url: str | None = PUBLIC_URL, **values: str | None) -> TwilioProvider:
    settings = {"ACCOUNT_SID": ACCOUNT_SID, "AUTH_TOKEN": AUTH_TOKEN, "FROM": FROM, "MESSAGING_SERVICE_SID": None,
                "API_URL": twilio.url} | values
    return create_provider("twilio", settings, Shared((1.0, 1.0), public_url))


def sent_fields(twilio: FakeTwilio) -> list[dict[str, str]]:
    return [dict(parse_qsl(r["body"].decode())) for r in twilio.received if r["method"] == "POST"]


# --- Sending: what Twilio receives, and its answers as verdicts ---------------------------------------

def test_a_message_is_sent_as_exactly_these_form_fields_with_basic_auth(twilio):
    result = make_provider(twilio).send("+381641234567", "Zdravo, čas je sutra", "SmartLab")
    assert result.outcome is Outcome.SENT and result.reference == next(iter(twilio.messages))
    [request] = twilio.received
    assert (request["method"], request["path"], request["status"]) == ("POST", MESSAGES_PATH, 201)
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent_fields(twilio) == [{"To": "+381641234567", "Body": "Zdravo, čas je sutra", "From": FROM,
                                    "StatusCallback": "https://sms.example.com/callbacks/twilio"}]


def test_a_messaging_service_sends_instead_of_from_and_without_public_url_reports_are_polled(twilio):
    provider = make_provider(twilio, public_url=None, FROM=None, MESSAGING_SERVICE_SID=SERVICE_SID)
    assert (provider.pushes_delivery_reports, provider.supports_delivery_reports) == (False, True)
    assert provider.send("+381641234567", "Zdravo", "SmartLab").ok
    assert sent_fields(twilio) == [{"To": "+381641234567", "Body": "Zdravo", "MessagingServiceSid": SERVICE_SID}]
    pushing = make_provider(twilio)
    assert (pushing.pushes_delivery_reports, pushing.supports_delivery_reports) == (True, False)


@pytest.mark.parametrize("phone, code", [("+15005550001", "21211"), ("+15005550009", "21614"),
                                         ("+15005550004", "21610")])
def test_an_invalid_or_unsubscribed_number_is_rejected_without_the_number_in_the_error(twilio, phone, code):
    result = make_provider(twilio).send(phone, "Zdravo", "SmartLab")
    assert (result.outcome, result.code) == (Outcome.REJECTED, code)
    assert phone not in result.message and phone[1:] not in result.message


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_or_failing_twilio_is_transient(twilio, status):
    twilio.fail_next = [status]
    provider = make_provider(twilio)
    assert provider.send("+381641234567", "Zdravo", "SmartLab").outcome is Outcome.TRANSIENT
    assert provider.send("+381641234567", "Zdravo", "SmartLab").ok


def test_bad_credentials_are_auth_and_the_token_is_in_no_message(twilio):
    result = make_provider(twilio, AUTH_TOKEN="not-the-token").send("+381641234567", "Zdravo", "SmartLab")
    assert (result.outcome, result.code) == (Outcome.AUTH, "20003")
    assert "not-the-token" not in result.message and AUTH_TOKEN not in result.message
    other_account = make_provider(twilio, ACCOUNT_SID="AC" + "1" * 32).send("+381641234567", "Zdravo", "SmartLab")
    assert other_account.outcome is Outcome.AUTH


def test_no_connection_is_transient_and_no_answer_after_sending_is_unknown():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    provider = create_provider("twilio", {"ACCOUNT_SID": ACCOUNT_SID, "AUTH_TOKEN": AUTH_TOKEN, "FROM": FROM,
                                          "MESSAGING_SERVICE_SID": None, "API_URL": f"http://127.0.0.1:{port}"},
                               Shared((0.5, 0.5)))
    assert provider.send("+381641234567", "Zdravo", "SmartLab").outcome is Outcome.TRANSIENT
    with socket.socket() as silent:  # takes the connection (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", port))
        silent.listen()
        assert provider.send("+381641234567", "Zdravo", "SmartLab").outcome is Outcome.UNKNOWN


def test_a_message_that_failed_at_once_is_rejected_and_the_specs_own_example_is_sent():
    provider = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, {"From": FROM},
                              KeepAliveClient("https://api.twilio.com", (1.0, 1.0)), None)
    example = SPEC["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["post"]["responses"]["201"][
        "content"]["application/json"]["examples"]["create"]["value"]
    answer = provider._verdict(HttpAnswer(201, json.dumps(example).encode(), None))
    assert (answer.outcome, answer.reference, answer.code) == (Outcome.SENT, "SM" + "a" * 32, "queued")
    failed = example | {"status": "failed", "error_code": 30007, "error_message": "Message filtered"}
    assert provider._verdict(HttpAnswer(201, json.dumps(failed).encode(), None)).outcome is Outcome.REJECTED
    assert provider._verdict(HttpAnswer(201, b"<html>", None)).outcome is Outcome.UNKNOWN


# --- Held to Twilio's spec -----------------------------------------------------------------------------

def test_every_request_the_client_sends_is_one_the_spec_declares(twilio):
    with_from = make_provider(twilio)
    sid = with_from.send("+381641234567", "Zdravo, čas je sutra u 18:00 & ponesite svesku", "SmartLab").reference
    make_provider(twilio, FROM=None, MESSAGING_SERVICE_SID=SERVICE_SID).send("+381641234567", "Zdravo", "S")
    make_provider(twilio, MESSAGING_SERVICE_SID=SERVICE_SID).send("+381641234567", "Zdravo", "S")
    with_from.delivery_report(sid)
    assert [(r["method"], r["status"]) for r in twilio.received] == [("POST", 201)] * 3 + [("GET", 200)]
    assert {f"{r['method']} {r['path']}": r["problems"] for r in twilio.received} == {
        f"POST {MESSAGES_PATH}": [], f"GET {MESSAGES_PATH.removesuffix('.json')}/{sid}.json": []}


def test_the_conformance_check_refuses_what_the_spec_does_not_allow():
    form = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic x"}

    def check(body: bytes, headers: dict | None = None, path: str = MESSAGES_PATH, method: str = "POST") -> list[str]:
        return request_problems({"method": method, "path": path, "headers": form if headers is None else headers,
                                 "body": body})

    assert check(b"To=%2B381641234567&Body=x&From=%2B15005550006") == []
    assert check(b"Body=x&From=%2B15005550006") == ["required field To is missing"]
    assert check(b"To=%2B381641234567&Sender=x") == ["field Sender is not a parameter of this operation"]
    assert check(b"To=1&MessagingServiceSid=MG123") != []  # pattern and length
    assert check(b"To=1&ValidityPeriod=soon") != [] and check(b"To=1&StatusCallback=/relative") != []
    assert check(b'{"To": "+381641234567"}', {**form, "Content-Type": "application/json"}) != []
    assert check(b"To=1", {"Content-Type": form["Content-Type"]}) == ["no HTTP Basic credentials"]
    assert check(b"To=1", path="/2010-04-01/Accounts/AC123/Messages.json") != []
    assert check(b"", path="/2010-04-01/Accounts/" + ACCOUNT_SID + "/Messages/SM1.json", method="GET") != []
    assert check(b"To=1", path="/2010-04-01/Messages.json") != []


def test_the_fakes_answers_are_shaped_as_the_spec_says(twilio):
    message = SUBSET.resolve(SPEC["components"]["schemas"]["api.v2010.account.message"])
    sid = make_provider(twilio).send("+381641234567", "Zdravo", "SmartLab").reference
    created = twilio.messages[sid]
    answer = {name: value for name, value in created.items() if name != "fields"}
    assert set(answer) <= set(message["properties"])
    assert answer["status"] in SUBSET.resolve(message["properties"]["status"])["enum"]


# --- Delivery reports polled (no PUBLIC_URL) ----------------------------------------------------------

def test_polled_reports_map_twilios_statuses(twilio):
    provider = make_provider(twilio, public_url=None)
    sid = provider.send("+381641234567", "Zdravo", "SmartLab").reference
    assert provider.delivery_report(sid).state is Delivery.PENDING
    twilio.set_status(sid, "undelivered", 30003)
    assert provider.delivery_report(sid) == DeliveryReport(Delivery.UNDELIVERED, "Twilio: undelivered (error 30003)")
    twilio.set_status(sid, "delivered")
    assert provider.delivery_report(sid).state is Delivery.DELIVERED
    assert provider.delivery_report("SM" + "f" * 32).state is Delivery.UNKNOWN


# --- Settings -----------------------------------------------------------------------------------------

def test_from_or_a_messaging_service_is_required_and_sids_are_checked():
    values = {"ACCOUNT_SID": ACCOUNT_SID, "AUTH_TOKEN": AUTH_TOKEN, "FROM": None, "MESSAGING_SERVICE_SID": None,
              "API_URL": "https://api.twilio.com"}
    assert TwilioProvider.problems(values) == [
        "TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID is required when twilio is used"]
    with pytest.raises(ValueError, match="TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID"):
        TwilioProvider.from_settings(values, Shared((1.0, 1.0)))
    assert TwilioProvider.problems(values | {"MESSAGING_SERVICE_SID": SERVICE_SID}) == []
    assert len(TwilioProvider.problems(values | {"ACCOUNT_SID": "AC1", "MESSAGING_SERVICE_SID": "MG1"})) == 2


def test_config_reads_twilios_settings_and_keeps_the_token_secret(tmp_path):
    config = load_config({"DATA_DIR": str(tmp_path), "SMS_PROVIDERS": "twilio", "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                          "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM": FROM})
    assert config.provider_settings["twilio"] | {"ACCOUNT_SID": ACCOUNT_SID, "AUTH_TOKEN": AUTH_TOKEN, "FROM": FROM,
                                                 "MESSAGING_SERVICE_SID": None, "API_URL": "https://api.twilio.com"} \
        == config.provider_settings["twilio"]
    assert AUTH_TOKEN in config.secrets()
    with pytest.raises(ConfigError) as caught:
        load_config({"DATA_DIR": str(tmp_path), "SMS_PROVIDERS": "twilio", "TWILIO_ACCOUNT_SID": "AC1",
                     "TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    assert caught.value.problems == ["TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits",
                                     "TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID is required when twilio is used"]


# --- The signature of callbacks -----------------------------------------------------------------------

VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
                 "Caller": "+14158675309"}


def test_the_signature_of_twilios_own_test_vector():
    assert twilio_signature("12345", VECTOR_URL, VECTOR_PARAMS.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert valid_twilio_signature("12345", VECTOR_URL, VECTOR_PARAMS.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not valid_twilio_signature("12346", VECTOR_URL, VECTOR_PARAMS.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    changed = VECTOR_PARAMS | {"Digits": "1235"}
    assert not valid_twilio_signature("12345", VECTOR_URL, changed.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_the_signature_as_twilios_validator_treats_ports_and_repeated_fields():
    """twilio-python's own cases: the port removed or the default one added; a repeated field's
    distinct values sorted."""
    with_port = VECTOR_URL.replace(".com", ".com:1234")
    assert valid_twilio_signature("12345", with_port, VECTOR_PARAMS.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    http_with_port = with_port.replace("https", "http")
    assert valid_twilio_signature("12345", http_with_port, VECTOR_PARAMS.items(), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")
    default_port = sign("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", VECTOR_PARAMS)
    assert valid_twilio_signature("12345", VECTOR_URL, VECTOR_PARAMS.items(), default_port)
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
    assert twilio_signature("12345", VECTOR_URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


# --- /callbacks/twilio --------------------------------------------------------------------------------

@pytest.fixture
def twilio_settings(settings, twilio) -> dict[str, str]:
    return settings | {"SMS_PROVIDERS": "twilio", "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                       "TWILIO_FROM": FROM, "TWILIO_API_URL": twilio.url, "PUBLIC_URL": PUBLIC_URL}


@pytest.fixture
def recorded(twilio_settings, monkeypatch):
    """The app, with what its callbacks hand the store's record_pushed_report kept in a list."""
    app = create_app(twilio_settings)
    calls: list[tuple] = []
    monkeypatch.setattr(services(app).store, "record_pushed_report", lambda *args: calls.append(args),
                        raising=False)
    return app.test_client(), calls


def callback(client, params: dict[str, str], signature: str | None = None, url: str = PUBLIC_URL + "/callbacks/twilio",
             path: str = "/callbacks/twilio"):
    headers = {} if signature == "" else {"X-Twilio-Signature": signature or sign(AUTH_TOKEN, url, params)}
    return client.post(path, data=urlencode(params), headers=headers,
                       content_type="application/x-www-form-urlencoded")


STATUS = {"MessageSid": "SM" + "1" * 32, "AccountSid": ACCOUNT_SID, "MessageStatus": "delivered",
          "To": "+381641234567", "From": FROM}


def test_a_callback_with_no_or_a_wrong_signature_is_refused_403(recorded):
    client, calls = recorded
    for signature in ("", "RSOYDt4T1cUTdK1PDd93/VVr8B8=", sign("another-token", PUBLIC_URL + "/callbacks/twilio",
                                                                STATUS)):
        response = callback(client, STATUS, signature)
        assert response.status_code == 403
        assert response.get_json() == {"status": "error", "message": "missing or wrong X-Twilio-Signature"}
    # Signed for the URL the request reached (the Host behind nginx), not the public one Twilio called:
    assert callback(client, STATUS, url="http://localhost/callbacks/twilio").status_code == 403
    tampered = sign(AUTH_TOKEN, PUBLIC_URL + "/callbacks/twilio", STATUS)
    assert callback(client, STATUS | {"MessageStatus": "failed"}, tampered).status_code == 403
    assert calls == []


@pytest.mark.parametrize("status, error_code, state, description", [
    ("delivered", None, DELIVERED, "Twilio: delivered"),
    ("undelivered", "30003", UNDELIVERED, "Twilio: undelivered (error 30003)"),
    ("failed", "30008", FAILED, "Twilio: failed (error 30008)"),
    ("read", None, DELIVERED, "Twilio: read"),
])
def test_a_final_status_is_recorded_as_a_pushed_report(recorded, status, error_code, state, description):
    client, calls = recorded
    params = STATUS | {"MessageStatus": status} | ({"ErrorCode": error_code} if error_code else {})
    response = callback(client, params)
    assert (response.status_code, response.data) == (204, b"")
    [(provider, reference, recorded_state, recorded_description, received_at)] = calls
    assert (provider, reference, recorded_state, recorded_description) == ("twilio", STATUS["MessageSid"], state,
                                                                          description)
    assert isinstance(received_at, float)


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "accepted", "scheduled"])
def test_a_status_that_is_not_final_is_accepted_and_not_recorded(recorded, status):
    client, calls = recorded
    assert callback(client, STATUS | {"MessageStatus": status}).status_code == 204
    assert calls == []


def test_a_callback_url_with_a_query_is_signed_with_it(recorded):
    client, calls = recorded
    url = PUBLIC_URL + "/callbacks/twilio?attempt=2&x=a%20b"
    assert callback(client, STATUS, url=url, path="/callbacks/twilio?attempt=2&x=a%20b").status_code == 204
    assert callback(client, STATUS, path="/callbacks/twilio?attempt=2&x=a%20b").status_code == 403
    assert len(calls) == 1


def test_callbacks_are_404_unless_twilio_and_public_url_are_set(settings):
    client = create_app(settings).test_client()
    response = callback(client, STATUS)
    assert response.status_code == 404 and response.get_json()["status"] == "error"


def test_a_signed_callback_without_a_message_sid_is_400(recorded):
    client, calls = recorded
    assert callback(client, {"MessageStatus": "delivered"}).status_code == 400
    assert calls == []


# --- End to end: the real worker sends, the fake calls back -------------------------------------------

@contextmanager
def serving(app, port: int):
    """The app on 127.0.0.1:`port` in a thread, where the fake Twilio calls back."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()


@pytest.fixture
def end_to_end(worker_settings, twilio) -> dict[str, str]:
    port = free_port()
    return worker_settings | {"SMS_PROVIDERS": "twilio", "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                              "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM": FROM, "TWILIO_API_URL": twilio.url,
                              "PUBLIC_URL": f"http://127.0.0.1:{port}"}


def test_sent_by_the_worker_then_delivered_by_twilios_signed_callback(end_to_end, twilio):
    store = settings_store(end_to_end)
    [message_id] = store.enqueue_many("test", 3600, [("+381641234567", "Zdravo iz Twilija", None, None)])
    port = int(end_to_end["PUBLIC_URL"].rsplit(":", 1)[1])
    with serving(create_app(end_to_end), port), running_worker(end_to_end):
        row = wait_until(lambda: (m := store.message(message_id))["status"] == SENT and m, what="SENT")
        assert sent_fields(twilio) == [{"To": "+381641234567", "Body": "Zdravo iz Twilija", "From": FROM,
                                        "StatusCallback": f"{end_to_end['PUBLIC_URL']}/callbacks/twilio"}]
        assert (row["gateway_ref"], row["report_next_at"]) == (next(iter(twilio.messages)), None)  # not polled
        assert twilio.post_status(row["gateway_ref"], "delivered").status_code == 204
        wait_until(lambda: store.message(message_id)["status"] == DELIVERED, what="DELIVERED")
    assert store.message(message_id)["report_text"] == "Twilio: delivered"
    assert [r["method"] for r in twilio.received] == ["POST"]
    assert all(r["problems"] == [] for r in twilio.received)


def test_a_callback_that_comes_before_the_send_is_written_is_not_lost(end_to_end, twilio):
    twilio.callback_first = "undelivered"
    store = settings_store(end_to_end)
    [message_id] = store.enqueue_many("test", 3600, [("+381641234567", "Zdravo", None, None)])
    port = int(end_to_end["PUBLIC_URL"].rsplit(":", 1)[1])
    with serving(create_app(end_to_end), port), running_worker(end_to_end):
        wait_until(lambda: store.message(message_id)["status"] == UNDELIVERED, what="UNDELIVERED")
    assert twilio.callbacks == [204]  # answered while the worker still waited for Twilio's answer
    row = store.message(message_id)
    assert (row["gateway_ref"], row["report_text"]) == (next(iter(twilio.messages)), "Twilio: undelivered")
