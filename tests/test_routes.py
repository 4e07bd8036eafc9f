"""Several providers at once: SMS_ROUTES, failover, each provider's own limits, cost, and the
per-provider report of `status` and /health; the real worker process against fakes on 127.0.0.1."""
from __future__ import annotations

import time
from collections import Counter

import pytest

import api_keys
from config import ConfigError, load_config
from sms_bulk_app import create_app
from store import DELIVERED, FAILED, SENT
from tests.conftest import run_command, running_worker, settings_store, wait_until
from tests.fake_gateways import closed_url

SERBIAN, RUSSIAN = "+381641234567", "+79001234567"


@pytest.fixture
def two(worker_settings, smsaero) -> dict[str, str]:
    """The fake OneClick and the fake SMS Aero, both configured; 381 numbers go to OneClick first."""
    return worker_settings | {"SMS_PROVIDERS": "oneclick,smsaero", "SMSAERO_EMAIL": smsaero.email,
                              "SMSAERO_API_KEY": smsaero.api_key, "SMSAERO_API_URL": smsaero.api_url,
                              "SMS_ROUTES": "381=oneclick,smsaero; 7=smsaero"}


def queue(settings: dict[str, str], phones: list[str], text: str = "Zdravo") -> list[int]:
    store = settings_store(settings)
    return store.enqueue_many("api", 3600, [(phone, f"{text} {index}", None, None)
                                            for index, phone in enumerate(phones)])


def sent(store, ids: list[int]) -> bool:
    """Every one sent: SENT, or DELIVERED by its report since."""
    return all(store.message(i)["status"] in (SENT, DELIVERED) for i in ids)


# --- SMS_ROUTES in config ---

BASE = {"SMS_PROVIDERS": "oneclick,smsaero", "ONECLICK_USERNAME": "u", "ONECLICK_PASSWORD": "p",
        "SMSAERO_EMAIL": "e@example.ru", "SMSAERO_API_KEY": "k"}


def test_routes_longest_prefix_wins_and_the_rest_take_the_star_route_or_sms_providers():
    config = load_config(BASE | {"SMS_ROUTES": "381=oneclick,smsaero; 3816=smsaero;\n7=smsaero"})
    assert config.route_for("+381641234567") == ("smsaero",)  # 3816 is longer than 381
    assert config.route_for("+381111234567") == ("oneclick", "smsaero")
    assert config.route_for(RUSSIAN) == ("smsaero",)
    assert config.route_for("+12025550100") == ("oneclick", "smsaero")  # no match: SMS_PROVIDERS
    star = load_config(BASE | {"SMS_ROUTES": "*=smsaero,oneclick; 381=oneclick"})
    assert star.route_for("+12025550100") == ("smsaero", "oneclick")
    assert star.route_for(SERBIAN) == ("oneclick",)
    assert load_config(BASE).route_for(RUSSIAN) == ("oneclick", "smsaero")


@pytest.mark.parametrize(("routes", "problem"), [
    ("381=twilio", "SMS_ROUTES entry '381=twilio': twilio is not in SMS_PROVIDERS=oneclick,smsaero: list every"
                   " provider a route uses there"),
    ("381=nosuch", "SMS_ROUTES entry '381=nosuch': no provider 'nosuch': choose from"),
    ("+381=oneclick", "SMS_ROUTES entry '+381=oneclick': the prefix must be the first 1-15 digits of numbers in"
                      " E.164 without '+' (381, 7), or * for every other number"),
    ("38a=oneclick", "SMS_ROUTES entry '38a=oneclick': the prefix must be"),
    ("0381=oneclick", "SMS_ROUTES entry '0381=oneclick': the prefix must be"),
    ("1234567890123456=oneclick", "the prefix must be the first 1-15 digits"),
    ("381", "SMS_ROUTES entry '381' must be prefix=provider[,provider...], such as 381=oneclick,smsaero"),
    ("381=", "SMS_ROUTES entry '381=' must be prefix=provider[,provider...]"),
    ("381=oneclick,oneclick", "SMS_ROUTES entry '381=oneclick,oneclick' names a provider twice"),
    ("381=oneclick; 381=smsaero", "SMS_ROUTES gives the prefix 381 twice"),
])
def test_a_bad_route_is_named(routes, problem):
    with pytest.raises(ConfigError) as error:
        load_config(BASE | {"SMS_ROUTES": routes})
    assert any(problem in found for found in error.value.problems), error.value.problems


def test_common_provider_settings_default_to_the_sms_ones_and_are_checked():
    config = load_config(BASE | {"SMS_RATE_PER_SEC": "7", "SMS_CONCURRENCY": "3", "SMSAERO_RATE_PER_SEC": "2",
                                 "ONECLICK_PRICE_PER_PART": "2.5", "ONECLICK_CURRENCY": "rsd"})
    oneclick, aero = config.provider_settings["oneclick"], config.provider_settings["smsaero"]
    assert (oneclick["RATE_PER_SEC"], oneclick["CONCURRENCY"], oneclick["PRICE_PER_PART"], oneclick["CURRENCY"]) \
        == (7.0, 3, 2.5, "RSD")
    assert (aero["RATE_PER_SEC"], aero["CONCURRENCY"], aero["PRICE_PER_PART"], aero["CURRENCY"]) == (2.0, 3, 0.0, "")
    with pytest.raises(ConfigError) as error:
        load_config(BASE | {"SMSAERO_CONCURRENCY": "0", "SMSAERO_PRICE_PER_PART": "1", "ONECLICK_CURRENCY": "dinar",
                            "ONECLICK_RATE_PER_SEC": "fast", "ONECLICK_PRICE_PER_PART": "1e308"})
    assert error.value.problems == [
        "ONECLICK_RATE_PER_SEC='fast' must be a number from 0 to 1,000,000,000",
        "ONECLICK_PRICE_PER_PART='1e308' must be a number from 0 to 1,000,000,000",
        "ONECLICK_CURRENCY='DINAR' must be a currency code of 3 letters, such as RSD",
        "SMSAERO_CONCURRENCY=0 must be between 1 and 256",
        "SMSAERO_PRICE_PER_PART needs SMSAERO_CURRENCY (the price's currency, such as RSD)"]


# --- routing and failover through the real worker ---

def test_each_number_goes_through_its_routes_provider(two, oneclick, smsaero):
    ids = queue(two, [SERBIAN, RUSSIAN, "+381651112233", "+79161234567"])
    store = settings_store(two)
    with running_worker(two):
        wait_until(lambda: sent(store, ids), what="all SENT")
    assert sorted(m["phone"] for m in oneclick.messages) == ["381641234567", "381651112233"]
    assert sorted(m["number"] for m in smsaero.messages) == ["79001234567", "79161234567"]
    assert [store.message(i)["provider"] for i in ids] == ["oneclick", "smsaero", "oneclick", "smsaero"]


@pytest.mark.parametrize("fault", ["5xx", "unreachable", "credentials"])
def test_a_failing_first_provider_fails_over_to_the_next_at_once(two, oneclick, smsaero, fault):
    two["SMS_RETRY_BASE_SECONDS"] = "30"  # a backed-off retry would not come within the test
    if fault == "5xx":
        oneclick.fail_next = [503] * 100
    elif fault == "unreachable":
        two["SMS_API_URL"] = closed_url("/SmsWebBulkApi/SendMsg.aspx")
    else:
        oneclick.password = "changed-at-the-gateway"
    ids = queue(two, [SERBIAN, "+381651112233", "+381661112233", "+381671112233", "+381681112233"])
    store = settings_store(two)
    with running_worker(two):
        wait_until(lambda: sent(store, ids), timeout=15, what="all SENT through smsaero")
        health = create_app(two).test_client().get("/health").get_json()
    assert oneclick.messages == []
    assert Counter(m["number"] for m in smsaero.messages) == Counter(p[1:] for p in
                                                                    [SERBIAN, "+381651112233", "+381661112233",
                                                                     "+381671112233", "+381681112233"])
    assert {store.message(i)["provider"] for i in ids} == {"smsaero"}
    expected = {"5xx": "down", "unreachable": "down", "credentials": "paused"}[fault]
    assert health["providers"]["oneclick"]["state"] == expected
    assert health["providers"]["smsaero"] == {"state": "healthy", "reason": None, "until": None,
                                              "sent_last_hour": 5, "failed_last_hour": 0}
    # A failed send through oneclick used an attempt (refused credentials do not), and none was backed
    # off (SMS_RETRY_BASE_SECONDS=30); once oneclick is down or paused, smsaero is tried first.
    attempts = {store.message(i)["attempts"] for i in ids}
    assert attempts == {1} if fault == "credentials" else 2 in attempts and attempts <= {1, 2}
    assert (health["checks"]["provider"].startswith("error: sending paused: oneclick")
            if fault == "credentials" else health["checks"]["provider"] == "ok")


def test_once_down_a_provider_is_skipped_until_its_time_is_up(two, oneclick, smsaero):
    two["SMS_RETRY_BASE_SECONDS"] = "5"  # down for 20 s
    oneclick.fail_next = [503] * 3
    first = queue(two, [SERBIAN, "+381651112233", "+381661112233"])
    store = settings_store(two)
    with running_worker(two):
        wait_until(lambda: sent(store, first), what="the first three SENT")
        state = store.provider_states()["oneclick"]
        assert state.failures == 3 and state.down_until > time.time() + 10
        later = queue(two, ["+381671112233", "+381681112233"])
        wait_until(lambda: sent(store, later), what="the later two SENT")
    assert oneclick.fail_next == [] and oneclick.messages == []  # not asked at all while down
    assert len(smsaero.messages) == 5


def test_a_rejection_does_not_fail_over(two, oneclick, smsaero):
    oneclick.answer_status = -1  # invalid number: permanent
    [message_id] = queue(two, [SERBIAN])
    store = settings_store(two)
    with running_worker(two):
        wait_until(lambda: store.message(message_id)["status"] == FAILED, what="FAILED")
    assert smsaero.received == []
    assert store.message(message_id)["provider"] == "oneclick"


def test_an_unknown_outcome_is_not_sent_through_another_provider(two, oneclick, smsaero):
    two |= {"SMS_MAX_UNKNOWN_OUTCOMES": "2", "SMS_RETRY_BASE_SECONDS": "0.05"}
    oneclick.latency = 1.5  # past HTTP_TIMEOUT=1: the request went out, no verdict came back
    [message_id] = queue(two, [SERBIAN])
    store = settings_store(two)
    with running_worker(two):
        wait_until(lambda: store.message(message_id)["status"] == FAILED, timeout=20, what="FAILED")
    message = store.message(message_id)
    assert (message["provider"], message["unknown_outcomes"]) == ("oneclick", 2)
    assert message["last_error"].startswith("not tried again: outcome unknown")
    assert smsaero.received == []  # its retry went to oneclick again, never to smsaero


def test_each_provider_keeps_its_own_rate_limit(two, oneclick, smsaero):
    two |= {"ONECLICK_RATE_PER_SEC": "5", "SMS_ROUTES": "381=oneclick; 7=smsaero"}
    serbian = [f"+38164100{i:04d}" for i in range(10)]
    russian = [f"+7900100{i:04d}" for i in range(10)]
    ids = queue(two, serbian + russian)
    store = settings_store(two)
    with running_worker(two):
        wait_until(lambda: sent(store, ids[10:]), what="the SMS Aero ones SENT")
        aero_done = time.monotonic()
        wait_until(lambda: sent(store, ids[:10]), what="the OneClick ones SENT")
    # 5 a second: ten sends take at least 9 x 0.2 s. Arrivals are not compared one by one: on a
    # loaded machine a send let through on time may arrive late, next to the following one.
    moments = sorted(m["at"] for m in oneclick.messages)
    assert len(moments) == 10 and moments[-1] - moments[0] >= 9 * 0.18, moments
    assert aero_done < moments[-1]  # SMS Aero, without a limit, did not wait for OneClick's


# --- cost, the estimate, status and /health ---

def test_cost_is_recorded_and_summed_per_provider_day_and_mailing(two, oneclick, smsaero):
    two |= {"ONECLICK_PRICE_PER_PART": "2.5", "ONECLICK_CURRENCY": "RSD", "SMSAERO_PRICE_PER_PART": "1.2",
            "SMSAERO_CURRENCY": "RUB"}
    app = create_app(two)
    store = app.extensions["sms_bulk_app"].store
    client = app.test_client()
    _, key = api_keys.create(store, "test", list(api_keys.SCOPES), None)
    headers = {"Authorization": f"Bearer {key}"}
    for phone in (SERBIAN, "+381651112233", RUSSIAN):
        assert client.post("/api/v1/clients", headers=headers, json={"phone": phone, "name": "Ana",
                                                                     "tags": ["robotika"]}).status_code == 201
    text = "Zdravo {first_name}, " + "upis počinje sutra. " * 5  # UCS-2: 2 parts with the name empty
    created = client.post("/api/v1/mailings", headers=headers, json={
        "start_at": "2020-01-01T00:00:00Z", "end_at": "2099-01-01T00:00:00Z", "text": text,
        "filter": {"tags": ["robotika"]}})
    assert created.status_code == 201
    estimate = created.get_json()["estimate"]
    assert estimate == {"recipients": 3, "parts_per_message": 2, "parts": 6, "cost": {"RSD": 10.0, "RUB": 2.4}}
    mailing_id = created.get_json()["id"]
    [single] = queue(two, ["+381661112233"])  # a message of no mailing, 1 part
    with running_worker(two):
        wait_until(lambda: store.counts()[SENT] + store.counts()[DELIVERED] == 4, what="4 sent")
    by_phone = {m["phone"]: m for m in (store.message(i) for i in range(1, 5))}
    assert (by_phone[SERBIAN]["cost"], by_phone[SERBIAN]["currency"]) == (5.0, "RSD")
    assert (by_phone[RUSSIAN]["cost"], by_phone[RUSSIAN]["currency"]) == (2.4, "RUB")
    assert store.message(single)["cost"] == 2.5
    stats = client.get(f"/api/v1/mailings/{mailing_id}/stats", headers=headers).get_json()
    assert stats["cost"] == {"RSD": 10.0, "RUB": 2.4}
    assert stats["by_provider"] == [
        {"provider": "oneclick", "messages": 2, "parts": 4, "cost": 10.0, "currency": "RSD"},
        {"provider": "smsaero", "messages": 1, "parts": 2, "cost": 2.4, "currency": "RUB"}]
    assert client.get("/api/v1/mailings/stats", headers=headers).get_json()["items"] == [stats]
    message = client.get(f"/api/v1/messages/{single}", headers=headers).get_json()
    assert (message["provider"], message["cost"], message["currency"]) == ("oneclick", 2.5, "RSD")
    days = store.costs_by_day(time.time() - 86400)
    assert [(line.provider, line.messages, line.parts, line.cost, line.currency) for line in days] == [
        ("oneclick", 3, 5, 12.5, "RSD"), ("smsaero", 1, 2, 2.4, "RUB")]
    assert days[0].group == time.strftime("%Y-%m-%d", time.gmtime())

    status = run_command(two, "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "  oneclick       healthy; 3 sent, 0 failed" in lines
    assert "  smsaero        healthy; 1 sent, 0 failed" in lines
    assert f"  {days[0].group}   oneclick       3 messages, 5 parts, 12.5 RSD" in lines
    assert f"  mailing {mailing_id:<4} smsaero        1 messages, 2 parts, 2.4 RUB" in lines
    health = client.get("/health").get_json()
    assert health["providers"]["oneclick"]["sent_last_hour"] == 3


def test_the_estimate_without_prices_or_routes(settings):
    app = create_app(settings)
    store = app.extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "test", list(api_keys.SCOPES), None)
    headers = {"Authorization": f"Bearer {key}"}
    client = app.test_client()
    client.post("/api/v1/clients", headers=headers, json={"phone": SERBIAN, "tags": ["a"]})
    created = client.post("/api/v1/mailings", headers=headers, json={
        "start_at": "2099-01-01T00:00:00Z", "end_at": "2099-01-02T00:00:00Z", "text": "Zdravo {name}",
        "filter": {"all": True}}).get_json()
    assert created["estimate"] == {"recipients": 1, "parts_per_message": 1, "parts": 1, "cost": {}}
    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    assert {"estimate"} <= set(schemas["MailingCreated"]["properties"])
    assert {"cost", "by_provider"} <= set(schemas["MailingStats"]["properties"])
