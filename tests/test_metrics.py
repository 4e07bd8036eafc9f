"""GET /metrics: Prometheus text, summed over gunicorn's workers and this host's worker processes,
right after a gunicorn worker dies; labels without phone numbers or user ids; the bearer token."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from sms_bulk_app import create_app
from tests.conftest import load_fixture, run_command, running_gunicorn, running_worker, wait_until
from tests.fakes import numbered_phone

PHONE = "+381641234567"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def webhook(base_url: str, user_id: int) -> int:
    payload = load_fixture("sub_lessons_left")
    payload["object"]["userId"] = user_id
    return requests.post(f"{base_url}/webhook", json=payload, timeout=30).status_code


def gunicorn_workers(base_url: str) -> set[int]:
    """The pids of the gunicorn workers serving `base_url`: the children of its master."""
    port = base_url.rsplit(":", 1)[1]
    ours = {int(pid) for pid in os.listdir("/proc") if pid.isdigit() and "gunicorn" in _cmdline(pid)
            and f"PORT={port}" in _environ(pid).splitlines()}
    masters = {pid for pid in ours if _parent(str(pid)) not in ours}
    return {pid for pid in ours if _parent(str(pid)) in masters}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _environ(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode()
    except OSError:
        return ""


def _parent(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_gunicorn_workers_and_the_worker_process_add_up_even_after_a_worker_is_killed(
        worker_settings, moyklass, oneclick):
    settings = worker_settings
    user_ids = list(range(3001, 3011))
    for user_id in user_ids:
        moyklass.add_user(user_id, numbered_phone(user_id))
    with running_gunicorn(settings, workers=2) as base_url:
        with ThreadPoolExecutor(max_workers=6) as pool:
            assert list(pool.map(lambda u: webhook(base_url, u), user_ids[:6])) == [200] * 6
        first = gunicorn_workers(base_url)
        assert len(first) == 2
        for pid in first:  # every worker dies; gunicorn starts new ones, which have counted nothing yet
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(gunicorn_workers(base_url) - first) == 2, what="two new gunicorn workers")
        wait_until(lambda: requests.get(f"{base_url}/health", timeout=5).status_code == 200, what="health")
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(lambda u: webhook(base_url, u), user_ids[6:])) == [200] * 4
        for index in range(3):  # queued for the worker process
            assert run_command(settings, "send", "--phone", f"+3816412300{index}", "--text", "Sutra nema nastave.") \
                .returncode == 0
        with running_worker(settings):
            wait_until(lambda: len(oneclick.messages) == 13, what="the worker's three sends")
            scraped = wait_until(lambda: _settled(base_url), what="the worker's results in /metrics")
            text = requests.get(f"{base_url}/metrics", timeout=5).text

    assert value(scraped, "sms_messages_total", status="SENT", provider="oneclick") == 13
    assert value(scraped, "sms_send_duration_seconds_count", provider="oneclick") == 13
    assert value(scraped, "sms_webhook_responses_total", code="200") == 10
    assert value(scraped, "sms_moyklass_requests_total", code="200") >= 11  # a token and ten users
    # The live processes only: the two killed workers were marked dead (child_exit).
    assert value(scraped, "sms_processes", role="web") == 2
    assert value(scraped, "sms_processes", role="worker") == 1
    assert value(scraped, "sms_queue_messages", status="QUEUED") == 0
    assert value(scraped, "sms_database_up") == 1
    assert_no_private_labels(text, [numbered_phone(u) for u in user_ids] + [f"+3816412300{i}" for i in range(3)],
                             user_ids)


def _settled(base_url: str) -> dict | None:
    scraped = samples(requests.get(f"{base_url}/metrics", timeout=5).text)
    return scraped if value(scraped, "sms_messages_total", status="SENT", provider="oneclick") == 13 else None


def assert_no_private_labels(text: str, phones: list[str], user_ids: list[int]) -> None:
    labels = {label for family in text_string_to_metric_families(text) for sample in family.samples
              for label in sample.labels.values()}
    digits = {phone.lstrip("+") for phone in phones} | {phone[-9:] for phone in phones}
    assert not [label for label in labels if any(d in label for d in digits)]
    assert not labels & {str(user_id) for user_id in user_ids}
    assert not [label for label in labels if label.lstrip("+").isdigit() and len(label) > 3]  # only HTTP codes


def test_labels_hold_no_phone_or_user_id_whatever_the_outcome(settings, moyklass, oneclick):
    moyklass.add_user(4001, PHONE)
    moyklass.add_user(4002, "011 123 4567")  # a landline: 422
    moyklass.add_user(4003, None)  # no phone: 404
    app = create_app(settings)
    client = app.test_client()
    for user_id in (4001, 4002, 4003, 4004):  # 4004: MoyKlass has no such user
        payload = load_fixture("sub_lessons_left")
        payload["object"]["userId"] = user_id
        client.post("/webhook", json=payload)
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain; version=")
    scraped = samples(answer.text)
    assert value(scraped, "sms_webhook_responses_total", code="200") == 1
    assert value(scraped, "sms_webhook_responses_total", code="422") == 1
    assert value(scraped, "sms_webhook_responses_total", code="404") == 2
    assert value(scraped, "sms_messages_total", status="FAILED", provider="none") == 3
    assert_no_private_labels(answer.text, [PHONE, "+381111234567"], [4001, 4002, 4003, 4004])


def test_queue_gauges_are_read_from_the_database_at_each_scrape(settings):
    app = create_app(settings)
    store = app.extensions["sms_bulk_app"].store
    client = app.test_client()
    assert value(samples(client.get("/metrics").text), "sms_queue_messages", status="QUEUED") == 0
    for _ in range(2):
        message_id = store.enqueue("api", 3600, phone=PHONE, text="Sutra nema nastave.")
    store.connection().execute("UPDATE messages SET next_attempt_at = ? WHERE id = ?", (time.time() - 30, message_id))
    scraped = samples(client.get("/metrics").text)
    assert value(scraped, "sms_queue_messages", status="QUEUED") == 2
    assert value(scraped, "sms_queue_messages", status="SENDING") == 0
    assert 30 <= value(scraped, "sms_queue_oldest_age_seconds") < 60


def test_metrics_token_is_required_when_set(settings):
    client = create_app(settings | {"METRICS_TOKEN": "scrape-token-123"}).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics").headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "scrape-token-123"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
    assert answer.status_code == 200
    assert "sms_queue_messages" in answer.text
    assert create_app(settings).test_client().get("/metrics").status_code == 200  # no token: open


def test_phones_are_counted_by_state_when_phones_are_gateways(settings):
    phones = {"SMS_PROVIDERS": "android,oneclick", "PHONES_PRIVATE_TOKEN": "private-token-of-the-school",
              "PHONES_OFFLINE_SECONDS": "60"}
    app = create_app(settings | phones)
    store = app.extensions["sms_bulk_app"].store
    now = time.time()
    ids = [store.create_device(f"Phone {n}", f"token-{n}", f"login-{n}", f"password-{n}", None, "[]", "1.0",
                               now - seen) for n, seen in enumerate((5, 5, 5, 3600, 7200))]
    store.disable_device(ids[1], now)
    store.revoke_device_token(ids[2])
    scraped = samples(app.test_client().get("/metrics").text)
    assert {state: value(scraped, "sms_phones", state=state) for state in ("online", "offline", "disabled", "revoked")
            } == {"online": 1, "offline": 2, "disabled": 1, "revoked": 1}
    without_phones = create_app(settings).test_client().get("/metrics").text
    assert "sms_queue_messages" in without_phones and "sms_phones" not in without_phones
