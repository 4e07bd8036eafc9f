"""SMS Aero, probe and the generic HTTP gateway against fakes on 127.0.0.1 (tests/fake_gateways.py),
one by one and through the worker."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from config import ConfigError, load_config
from http_client import KeepAliveClient
from providers import Delivery, Outcome, Shared, create_provider
from providers.http_gateway import HttpGatewayProvider
from providers.smsaero import SmsAeroProvider
from store import DELIVERED, QUEUED, SENT
from tests.conftest import running_worker, settings_store, wait_until
from tests.fake_gateways import FakeLocalGateway, FakeProbe, FakeSmsAero, closed_url, json_body

SHARED = Shared((1.0, 1.0))
PHONE = "+381641234567"
# Quotes, a backslash, a newline, an ampersand, = and +, Cyrillic: it must arrive as it is.
TRICKY_TEXT = 'Čas "robotike" je\nsutra & 17:00 = 1+1 \\ Привет'


@pytest.fixture
def probe():
    fake = FakeProbe().start()
    yield fake
    fake.stop()


@pytest.fixture
def gateway():
    fake = FakeLocalGateway(api_key="local-key-42").start()
    yield fake
    fake.stop()


def provider_from(env: dict[str, str]):
    """The provider SMS_PROVIDERS names, built as the service builds it: settings read by config."""
    config = load_config(env)
    return create_provider(config.sms_provider, config.provider_settings[config.sms_provider], SHARED)


def worker_log(settings: dict[str, str]) -> str:
    return (Path(settings["DATA_DIR"]) / "sms_bulk_app.log").read_text(encoding="utf-8")


# --- SMS Aero ---

def smsaero_env(fake: FakeSmsAero, **more: str) -> dict[str, str]:
    return {"SMS_PROVIDERS": "smsaero", "SMSAERO_EMAIL": fake.email, "SMSAERO_API_KEY": fake.api_key,
            "SMSAERO_API_URL": fake.api_url, **more}


def test_smsaero_send_is_a_json_post_with_basic_auth_and_keeps_the_message_id(smsaero):
    result = provider_from(smsaero_env(smsaero)).send(PHONE, TRICKY_TEXT, "SmartLab")
    assert (result.outcome, result.reference, result.code) == (Outcome.SENT, "41000", "0")
    request = smsaero.received[0]
    assert (request["method"], request["path"]) == ("POST", "/v2/sms/send")
    scheme, _, credentials = request["headers"]["Authorization"].partition(" ")
    assert (scheme, base64.b64decode(credentials).decode()) == ("Basic", f"{smsaero.email}:{smsaero.api_key}")
    assert request["headers"]["Content-Type"].startswith("application/json")
    assert json_body(request) == {"number": 381641234567, "text": TRICKY_TEXT, "sign": "SmartLab"}


def test_smsaero_sign_overrides_the_sender(smsaero):
    result = provider_from(smsaero_env(smsaero, SMSAERO_SIGN="SMS Aero")).send(PHONE, "Zdravo", "SmartLab")
    assert result.ok and json_body(smsaero.received[0])["sign"] == "SMS Aero"


def test_smsaero_invalid_number_and_a_rejected_text_fail_the_message(smsaero):
    provider = provider_from(smsaero_env(smsaero))
    invalid = provider.send("+1234", "Zdravo", "SmartLab")
    assert (invalid.outcome, invalid.code, invalid.message) == (Outcome.REJECTED, "http-400",
                                                                 "SMS Aero: number: invalid number")
    smsaero.reject_reason = "stop word in the text"
    rejected = provider.send(PHONE, "Zdravo", "SmartLab")
    assert (rejected.outcome, rejected.message) == (Outcome.REJECTED, "SMS Aero: stop word in the text")


def test_smsaero_5xx_and_no_connection_are_transient_a_silent_gate_unknown(smsaero):
    smsaero.fail_next = [503]
    assert provider_from(smsaero_env(smsaero)).send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.TRANSIENT
    down = provider_from(smsaero_env(smsaero, SMSAERO_API_URL=closed_url("/v2"))).send(PHONE, "Zdravo", "SmartLab")
    assert (down.outcome, down.code) == (Outcome.TRANSIENT, "connection")
    smsaero.latency = 1.5
    silent = provider_from(smsaero_env(smsaero)).send(PHONE, "Zdravo", "SmartLab")
    assert (silent.outcome, silent.code) == (Outcome.UNKNOWN, "timeout")


def test_smsaero_bad_credentials_and_no_credits_pause_the_provider(smsaero):
    refused = provider_from(smsaero_env(smsaero, SMSAERO_API_KEY="wrong-key-123")).send(PHONE, "Zdravo", "SmartLab")
    assert (refused.outcome, refused.code) == (Outcome.AUTH, "http-401")
    assert "wrong-key-123" not in refused.message
    smsaero.balance = 0
    broke = provider_from(smsaero_env(smsaero)).send(PHONE, "Zdravo", "SmartLab")
    assert (broke.outcome, broke.code) == (Outcome.AUTH, "no-credits")
    assert smsaero.messages == []


@pytest.mark.parametrize("status, state, description", [
    (1, Delivery.DELIVERED, "delivery"), (2, Delivery.UNDELIVERED, "no delivery"), (6, Delivery.FAILED, "reject"),
    (0, Delivery.PENDING, "queue"), (3, Delivery.PENDING, "transmitted"), (4, Delivery.PENDING, "waiting"),
    (8, Delivery.PENDING, "moderation")])
def test_smsaero_delivery_reports_are_polled_from_sms_status(smsaero, status, state, description):
    provider = provider_from(smsaero_env(smsaero))
    assert provider.supports_delivery_reports
    reference = provider.send(PHONE, "Zdravo", "SmartLab").reference
    smsaero.report_status = status
    report = provider.delivery_report(reference)
    assert (report.state, report.description) == (state, description)
    request = smsaero.received[-1]
    assert (request["path"], json_body(request)) == ("/v2/sms/status", {"id": int(reference)})


def test_smsaero_a_report_that_cannot_be_had_is_asked_for_again(smsaero):
    provider = provider_from(smsaero_env(smsaero))
    assert provider.delivery_report("999").state is Delivery.PENDING  # "Message not found"
    smsaero.fail_next = [502]
    assert provider.delivery_report("41000").state is Delivery.PENDING


def test_smsaero_gates_are_the_official_three_unless_api_url_names_one(smsaero):
    default = provider_from(smsaero_env(smsaero, SMSAERO_API_URL=""))
    assert [(gate.host, gate.path, gate.secure) for gate in default.gates] == [
        ("gate.smsaero.ru", "/v2", True), ("gate.smsaero.org", "/v2", True), ("gate.smsaero.net", "/v2", True)]
    named = provider_from(smsaero_env(smsaero))
    assert [f"http://{gate.host}:{gate.port}{gate.path}" for gate in named.gates] == [smsaero.api_url]


def test_smsaero_an_unreachable_gate_falls_back_to_the_next_and_a_silent_one_does_not(smsaero):
    second = FakeSmsAero(smsaero.email, smsaero.api_key).start()
    try:
        gates = [KeepAliveClient(url, SHARED.http_timeouts) for url in (closed_url("/v2"), smsaero.api_url,
                                                                         second.api_url)]
        provider = SmsAeroProvider(smsaero.email, smsaero.api_key, None, gates)
        assert provider.send(PHONE, "Prvi", "SmartLab").ok  # the first gate refuses connections
        assert provider.send(PHONE, "Drugi", "SmartLab").ok
        assert [m["text"] for m in smsaero.messages] == ["Prvi", "Drugi"] and second.received == []
        smsaero.latency = 1.5  # reached, then silent: the SMS may be on its way, no other gate is tried
        assert provider.send(PHONE, "Treci", "SmartLab").outcome is Outcome.UNKNOWN
        assert second.received == []
        smsaero.stop()  # gone: the next send goes round to the third gate
        assert provider.send(PHONE, "Cetvrti", "SmartLab").ok
        assert [m["text"] for m in second.messages] == ["Cetvrti"]
    finally:
        second.stop()


def test_smsaero_through_the_worker_ends_delivered_and_logs_no_key(worker_settings, smsaero):
    settings = worker_settings | smsaero_env(smsaero)
    store = settings_store(settings)
    store.enqueue_many("test", 3600, [(PHONE, "Zdravo iz SMS Aero", None, None)])
    with running_worker(settings):
        wait_until(lambda: store.message(1)["status"] == DELIVERED, what="DELIVERED")
    row = store.message(1)
    assert (row["gateway_ref"], row["report_text"]) == ("41000", "delivery")
    assert [(m["number"], m["text"]) for m in smsaero.messages] == [("381641234567", "Zdravo iz SMS Aero")]
    log = worker_log(settings)
    assert "Sent message 1 (event -, user -) to +381*******67 via smsaero: ref 41000" in log
    assert smsaero.api_key not in log


def test_smsaero_no_credits_pauses_sending_and_keeps_the_message_queued(worker_settings, smsaero):
    smsaero.balance = 0
    settings = worker_settings | smsaero_env(smsaero)
    store = settings_store(settings)
    store.enqueue_many("test", 3600, [(PHONE, "Zdravo", None, None)])
    with running_worker(settings):
        pause = wait_until(lambda: store.provider_pause("smsaero"), what="a pause of smsaero")
    assert "no credits" in pause.reason
    row = store.message(1)
    assert row["status"] == QUEUED and "no credits" in row["last_error"] and smsaero.api_key not in row["last_error"]


# --- probe ---

def probe_env(fake: FakeProbe, **more: str) -> dict[str, str]:
    return {"SMS_PROVIDERS": "probe", "PROBE_TOKEN": fake.token, "PROBE_API_URL": fake.api_url, **more}


def test_probe_send_posts_the_message_to_its_id_with_the_bearer_token(probe):
    result = provider_from(probe_env(probe)).send(PHONE, TRICKY_TEXT, "SmartLab")
    assert (result.outcome, result.code, result.message) == (Outcome.SENT, "0", "OK")
    request = probe.received[0]
    body = json_body(request)
    assert (request["method"], request["path"]) == ("POST", f"/v1/send/{body['id']}")
    assert request["headers"]["Authorization"] == f"Bearer {probe.token}"
    assert body == {"id": int(result.reference), "phone": 381641234567, "text": TRICKY_TEXT}
    second = provider_from(probe_env(probe)).send(PHONE, "Drugi", "SmartLab")
    assert second.reference != result.reference


def test_probe_verdicts(probe):
    provider = provider_from(probe_env(probe))
    probe.fail_next = [400, 503, 429]
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.REJECTED
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.TRANSIENT
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.TRANSIENT
    refused = provider_from(probe_env(probe, PROBE_TOKEN="stale.jwt.token")).send(PHONE, "Zdravo", "SmartLab")
    assert (refused.outcome, refused.code) == (Outcome.AUTH, "http-401") and "stale.jwt.token" not in refused.message
    down = provider_from(probe_env(probe, PROBE_API_URL=closed_url("/v1"))).send(PHONE, "Zdravo", "SmartLab")
    assert down.outcome is Outcome.TRANSIENT
    assert not provider.supports_delivery_reports  # the API has none: a sent message stays SENT
    assert probe.messages == []


def test_probe_default_url_is_the_public_server(probe):
    config = load_config({"SMS_PROVIDERS": "probe", "PROBE_TOKEN": probe.token})
    assert config.provider_settings["probe"] == {"TOKEN": probe.token, "API_URL": "https://probe.fbrq.cloud/v1",
                                                 "RATE_PER_SEC": 0.0, "CONCURRENCY": 16, "PRICE_PER_PART": 0.0,
                                                 "CURRENCY": ""}
    assert probe.token in config.secrets()


def test_probe_through_the_worker_ends_sent_and_logs_no_token(worker_settings, probe):
    settings = worker_settings | probe_env(probe)
    store = settings_store(settings)
    store.enqueue_many("test", 3600, [(PHONE, "Zdravo iz probe", None, None)])
    with running_worker(settings):
        wait_until(lambda: store.message(1)["status"] == SENT, what="SENT")
    assert [(m["phone"], m["text"]) for m in probe.messages] == [(381641234567, "Zdravo iz probe")]
    assert store.message(1)["gateway_ref"] == str(probe.messages[0]["id"])
    assert probe.token not in worker_log(settings)


# --- the generic HTTP gateway ---

def gateway_env(fake: FakeLocalGateway, **more: str) -> dict[str, str]:
    return {"SMS_PROVIDERS": "http_gateway", "HTTP_GATEWAY_URL": fake.url("/api/sms"),
            "HTTP_GATEWAY_HEADERS": "X-Api-Key: {secret}; Accept: application/json",
            "HTTP_GATEWAY_SECRET": fake.api_key, **more}


def test_http_gateway_json_body_escapes_every_value(gateway):
    provider = provider_from(gateway_env(
        gateway, HTTP_GATEWAY_BODY='{"to": "{phone_digits}", "msg": {"text": "{text}", "from": "{sender}"},'
                                   ' "tags": ["sms", "{id}"], "flash": false}',
        HTTP_GATEWAY_SUCCESS="status=0", HTTP_GATEWAY_REFERENCE="message_id"))
    result = provider.send(PHONE, TRICKY_TEXT, 'Smart"Lab')
    assert (result.outcome, result.reference, result.code) == (Outcome.SENT, "gw-1", "0")
    request = gateway.received[0]
    assert (request["method"], request["path"]) == ("POST", "/api/sms")
    assert request["headers"]["X-Api-Key"] == "local-key-42"
    assert request["headers"]["Content-Type"] == "application/json; charset=utf-8"
    body = json_body(request)
    assert body == {"to": "381641234567", "msg": {"text": TRICKY_TEXT, "from": 'Smart"Lab'},
                    "tags": ["sms", body["tags"][1]], "flash": False}
    assert body["tags"][1].isdigit()


def test_http_gateway_form_body_is_form_encoded(gateway):
    provider = provider_from(gateway_env(gateway, HTTP_GATEWAY_FORMAT="form",
                                         HTTP_GATEWAY_BODY="user=school&to={phone}&text={text}&from={sender}"))
    assert provider.send(PHONE, TRICKY_TEXT, "SmartLab").ok
    request = gateway.received[0]
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request["body"].decode("ascii"), strict_parsing=True) == {
        "user": ["school"], "to": [PHONE], "text": [TRICKY_TEXT], "from": ["SmartLab"]}


def test_http_gateway_get_puts_the_values_in_the_url(gateway):
    provider = provider_from(gateway_env(gateway, HTTP_GATEWAY_URL=gateway.url("/send/{id}?key={secret}"),
                                         HTTP_GATEWAY_METHOD="get", HTTP_GATEWAY_HEADERS="",
                                         HTTP_GATEWAY_BODY="to={phone}&text={text}"))
    gateway.api_key = None
    result = provider.send(PHONE, TRICKY_TEXT, "SmartLab")
    request = gateway.received[0]
    assert (request["method"], request["path"], request["body"]) == ("GET", f"/send/{result.reference}", b"")
    assert request["query"] == {"key": ["local-key-42"], "to": [PHONE], "text": [TRICKY_TEXT]}
    assert (result.outcome, result.code) == (Outcome.SENT, "200")  # no SUCCESS: any 2xx


def test_http_gateway_verdicts(gateway):
    provider = provider_from(gateway_env(gateway, HTTP_GATEWAY_SUCCESS="status=0|queued",
                                         HTTP_GATEWAY_AUTH_ERROR="401,403,status=-10"))
    answers = [(200, {"status": -1, "error": "invalid number"}), (200, {"status": "queued"}), (200, b"OK"),
               (422, {"error": "text too long"}), (503, b"busy"), (200, {"status": -10})]
    gateway.respond = lambda request: answers.pop(0)
    invalid = provider.send(PHONE, "Zdravo", "SmartLab")
    assert (invalid.outcome, invalid.code) == (Outcome.REJECTED, "-1") and "invalid number" in invalid.message
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.SENT
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.UNKNOWN  # 2xx, no JSON verdict
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.REJECTED
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.TRANSIENT
    assert provider.send(PHONE, "Zdravo", "SmartLab").outcome is Outcome.AUTH  # status=-10 at HTTP 200
    down = provider_from(gateway_env(gateway, HTTP_GATEWAY_URL=closed_url("/api"))).send(PHONE, "Zdravo", "SmartLab")
    assert (down.outcome, down.code) == (Outcome.TRANSIENT, "connection")


def test_http_gateway_bad_credentials_pause_and_never_show_the_key(gateway):
    gateway.respond = lambda request: (200, {"echo": request["headers"].get("X-Api-Key")})
    provider = provider_from(gateway_env(gateway, HTTP_GATEWAY_SECRET="wrong-key-7"))
    refused = provider.send(PHONE, "Zdravo", "SmartLab")
    assert (refused.outcome, refused.code) == (Outcome.AUTH, "http-401")
    rejected = provider_from(gateway_env(gateway, HTTP_GATEWAY_SUCCESS="status=0")).send(PHONE, "Zdravo", "SmartLab")
    assert rejected.outcome is Outcome.REJECTED and "***" in rejected.message  # the echoed key, hidden
    assert "local-key-42" not in rejected.message


def test_http_gateway_settings_problems_are_named_without_secrets():
    with pytest.raises(ConfigError) as caught:
        load_config({"SMS_PROVIDERS": "http_gateway", "HTTP_GATEWAY_URL": "http://gw.local/{to}",
                     "HTTP_GATEWAY_METHOD": "GET", "HTTP_GATEWAY_FORMAT": "json",
                     "HTTP_GATEWAY_BODY": '{"to": "{phone}"', "HTTP_GATEWAY_HEADERS": "Bearer sk-live-1",
                     "HTTP_GATEWAY_SUCCESS": "accepted", "HTTP_GATEWAY_AUTH_ERROR": "401,code"})
    problems = caught.value.problems
    assert problems == [
        "HTTP_GATEWAY_METHOD=GET sends no body: HTTP_GATEWAY_FORMAT must be query, not json",
        "HTTP_GATEWAY_URL: no placeholder {to}; there are {id}, {phone}, {phone_digits}, {secret}, {sender}, {text}",
        "HTTP_GATEWAY_BODY must be a JSON document for FORMAT=json (Expecting ',' delimiter: line 1 column 17"
        " (char 16))",
        "HTTP_GATEWAY_HEADERS: each header is Name: value, separated by ;",
        "HTTP_GATEWAY_SUCCESS: 'accepted' is not path=value, e.g. status=0",
        "HTTP_GATEWAY_AUTH_ERROR: 'code' is not path=value nor an HTTP status"]
    assert "sk-live-1" not in caught.value.report()
    assert HttpGatewayProvider.problems(
        {"URL": "http://gw.local/send", "HEADERS": '{"Authorization": "Bearer {text}"}'}) == [
        "HTTP_GATEWAY_HEADERS may hold only the {secret} placeholder"]


def test_http_gateway_through_the_worker_ends_sent_and_logs_no_secret(worker_settings, gateway):
    settings = worker_settings | gateway_env(gateway, HTTP_GATEWAY_SUCCESS="status=0",
                                             HTTP_GATEWAY_REFERENCE="message_id",
                                             HTTP_GATEWAY_BODY='{"number": "{phone_digits}", "message": "{text}"}')
    store = settings_store(settings)
    store.enqueue_many("test", 3600, [(PHONE, TRICKY_TEXT, None, None)])
    with running_worker(settings):
        wait_until(lambda: store.message(1)["status"] == SENT, what="SENT")
    assert store.message(1)["gateway_ref"] == "gw-1"
    assert [json.loads(r["body"]) for r in gateway.received] == [{"number": "381641234567", "message": TRICKY_TEXT}]
    assert gateway.api_key not in worker_log(settings)


def test_every_secret_setting_is_masked_in_logs(smsaero, probe, gateway):
    """config.secrets() feeds the log's masking: the key, the token, the headers and the secret."""
    for env, secret_values in [
            (smsaero_env(smsaero), {smsaero.api_key}),
            (probe_env(probe), {probe.token}),
            (gateway_env(gateway), {"X-Api-Key: {secret}; Accept: application/json", gateway.api_key})]:
        assert set(load_config(env).secrets()) == secret_values
