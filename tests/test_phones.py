"""Phones as gateways, end to end: the simulated app (tests/phone_sim.py) against real gunicorn, the
real worker and the event stream process, on SQLite and on PostgreSQL."""
from __future__ import annotations

import socket
import subprocess
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

import api_keys
import devices
from sms_bulk_app import create_app
from tests.conftest import (
    command,
    command_env,
    free_port,
    run_command,
    running_gunicorn,
    running_worker,
    settings_store,
    wait_until,
)
from tests.phone_sim import USER_AGENT, PhoneSim

PRIVATE_TOKEN = "private-token-4242-abcdef"


@pytest.fixture
def phone_settings(worker_settings) -> dict[str, str]:
    return worker_settings | {
        "SMS_PROVIDERS": "android,oneclick", "PHONES_PRIVATE_TOKEN": PRIVATE_TOKEN, "PHONES_HOURS": "00:00-23:59",
        "PHONES_LEASE_SECONDS": "6", "PHONES_GRACE_SECONDS": "6", "PHONES_RATE_PER_MINUTE": "1000",
        "PHONES_RATE_PER_DAY": "100000", "PHONES_OFFLINE_SECONDS": "30", "PHONES_EVENTS_PORT": str(free_port()),
        "SMS_ROUTES": "*=android"}


@contextmanager
def running_phone_events(settings: dict[str, str]):
    """`python sms_bulk_app.py phones-events` as its own process; yields the URL phones are given for /events."""
    port = int(settings["PHONES_EVENTS_PORT"])
    output = open(Path(settings["DATA_DIR"]).parent / "phones-events.out", "wb")
    process = subprocess.Popen(command(settings, "phones-events"), cwd=Path(settings["DATA_DIR"]).parent,
                               env=command_env(settings), stdout=output, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                assert process.poll() is None, (Path(settings["DATA_DIR"]).parent / "phones-events.out").read_text()
                return False

        wait_until(listening, 60, what="the event stream process")
        yield f"http://127.0.0.1:{port}/api/mobile/v1"
    finally:
        process.terminate()
        process.wait(timeout=20)
        output.close()


@contextmanager
def the_service(settings: dict[str, str], threads: int = 8):
    """gunicorn (one worker), a worker and the event streams; yields (the device API's URL, the events' URL)."""
    Path(settings["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    settings_store(settings)  # migrated once, before the processes start together
    with ExitStack() as stack:
        base = stack.enter_context(running_gunicorn(settings, workers=1, threads=threads))
        stack.enter_context(running_worker(settings))
        events = stack.enter_context(running_phone_events(settings))
        yield f"{base}/api/mobile/v1", events


def phone(url: str, events: str, name: str) -> PhoneSim:
    return PhoneSim(url, PRIVATE_TOKEN, name, events_url=events, reconnect_seconds=1, delivery_seconds=0.05)


def statuses(store, ids: list[int]) -> list[str]:
    return [store.message(message_id)["status"] for message_id in ids]


def streaming(store, sim: PhoneSim) -> bool:
    """The phone's event stream is open, and the worker has seen it online (it looks once a second)."""
    device = store.device(int(sim.device_id))
    if device.events_until and device.events_until > time.time():
        time.sleep(devices.READY_CHECK_SECONDS + 0.2)
        return True
    return False


def test_a_phone_registers_hears_of_a_message_within_a_second_sends_and_reports(phone_settings):
    store = settings_store(phone_settings)
    with the_service(phone_settings) as (url, events):
        sim = phone(url, events, "Google/pixel7").start()
        try:
            wait_until(lambda: streaming(store, sim), 10, what="the phone's event stream")
            queued_at = time.time()
            [message_id] = store.enqueue_many("api", 3600, [("+381641234567", "Sutra nema nastave.", None, None)])
            wait_until(lambda: [e for e in sim.events if e[0] >= queued_at and e[1] == "MessageEnqueued"], 5,
                       what="MessageEnqueued")
            heard = next(at for at, kind in sim.events if at >= queued_at and kind == "MessageEnqueued")
            pulled = wait_until(lambda: next((at for at, count in sim.pulls if at >= queued_at and count), None), 5,
                                what="the pull")
            print(f"queued -> MessageEnqueued {heard - queued_at:.3f} s, -> pulled {pulled - queued_at:.3f} s")
            assert heard - queued_at < 1.0
            wait_until(lambda: statuses(store, [message_id]) == ["DELIVERED"], 10, what="DELIVERED")
            assert sim.radio == [(sim.local.popitem()[0], "+381641234567", "Sutra nema nastave.")]
            row = store.message(message_id)
            assert row["provider"] == "android" and row["device_id"] == int(sim.device_id) and row["attempts"] == 0
            health = requests.get(url.replace("/api/mobile/v1", "/health"), timeout=5).json()["phones"]
            assert health[0] | {"last_seen": None} == health[0] | {
                "name": "Google/pixel7", "state": "online", "events_connected": True, "app_version": "1.68.0",
                "battery": None, "sent_today": 1, "failed_today": 0, "last_seen": None}
            status = run_command(phone_settings, "status").stdout
            assert "Google/pixel7" in status and "online" in status and "events open" in status
        finally:
            sim.stop()


def test_a_phone_going_off_mid_batch_fails_over_and_its_late_reports_are_credited_never_sent_twice(phone_settings):
    store = settings_store(phone_settings)
    with the_service(phone_settings) as (url, events):
        first = phone(url, events, "Samsung/a52")
        first.send_budget = 5
        first.start()
        second = None
        try:
            wait_until(lambda: streaming(store, first), 10, what="the first phone's stream")
            ids = store.enqueue_many("api", 3600, [(f"+38164100{n:04d}", f"Poruka {n}", None, None)
                                                   for n in range(20)])
            wait_until(lambda: statuses(store, ids).count("DELIVERED") == 5 and len(first.local) == 20, 15,
                       what="5 DELIVERED, the whole batch held")
            first.network = False  # it sends 3 more, whose reports cannot get through
            first.send_budget = 3
            wait_until(lambda: len(first.radio) == 8, 5, what="3 more sent")
            first.power_off()  # 12 never sent: their validUntil is the lease's end
            second = phone(url, events, "Xiaomi/redmi").start()
            wait_until(lambda: streaming(store, second), 10, what="the second phone's stream")
            time.sleep(max(0.0, min(row["device_lease_until"] for row in map(store.message, ids)
                                    if row["device_lease_until"]) - time.time() + 0.5))
            first.network = True
            first.power_on()  # after its lease, inside the grace: its 3 late reports land, 12 "TTL expired"
            wait_until(lambda: set(statuses(store, ids)) == {"DELIVERED"}, 30, what="all 20 DELIVERED")
            sent = [entry[0] for entry in first.radio + second.radio]
            assert len(sent) == len(set(sent)) == 20, "a message was sent twice"
            assert (len(first.radio), len(second.radio)) == (8, 12)
            by_phone = {int(first.device_id): 0, int(second.device_id): 0}
            for row in map(store.message, ids):
                by_phone[row["device_id"]] += 1
            assert by_phone == {int(first.device_id): 8, int(second.device_id): 12}
            moved = [store.message(i) for i in ids if store.message(i)["device_id"] == int(second.device_id)]
            assert {row["attempts"] for row in moved} == {1}  # the phone's failure counted one attempt
        finally:
            first.stop()
            if second:
                second.stop()


def test_a_lease_that_ends_unreported_goes_to_another_phone_after_the_grace(phone_settings):
    store = settings_store(phone_settings | {"PHONES_LEASE_SECONDS": "3", "PHONES_GRACE_SECONDS": "2"})
    settings = phone_settings | {"PHONES_LEASE_SECONDS": "3", "PHONES_GRACE_SECONDS": "2"}
    with the_service(settings) as (url, events):
        first = phone(url, events, "Nokia/g21")
        first.hold = True
        first.start()
        second = None
        try:
            wait_until(lambda: streaming(store, first), 10, what="the first phone's stream")
            ids = store.enqueue_many("api", 3600, [(f"+38164200{n:04d}", f"Poruka {n}", None, None) for n in range(4)])
            wait_until(lambda: len(first.local) == 4, 5, what="the first phone's pull")
            first.power_off()
            handed_at = time.time()
            second = phone(url, events, "Motorola/g54").start()
            wait_until(lambda: set(statuses(store, ids)) == {"DELIVERED"}, 20, what="DELIVERED by the second")
            assert time.time() - handed_at >= 3 + 2 - 1  # not before the lease and its grace
            first.hold = False
            first.power_on()  # back late: what it held has expired on it, its reports change nothing
            wait_until(lambda: all(m.state == "Failed" for m in first.local.values()) and not first.unreported(), 10,
                       what="the first phone's late reports")
            time.sleep(0.5)
            assert set(statuses(store, ids)) == {"DELIVERED"} and first.radio == [] and len(second.radio) == 4
            assert {store.message(i)["attempts"] for i in ids} == {1}
        finally:
            first.stop()
            if second:
                second.stop()


def test_cancelling_a_mailing_cancels_what_a_phone_holds_over_its_event_stream(phone_settings):
    store = settings_store(phone_settings)
    _, key = api_keys.create(store, "test", ["clients:write", "mailings:write", "read"], None)
    with the_service(phone_settings) as (url, events):
        api = url.replace("/api/mobile/v1", "/api/v1")
        headers = {"Authorization": f"Bearer {key}"}
        for n in range(3):
            assert requests.post(f"{api}/clients", json={"phone": f"+3816430000{n}", "tags": ["t"]}, headers=headers,
                                 timeout=5).status_code == 201
        sim = phone(url, events, "OnePlus/nord")
        sim.hold = True
        sim.start()
        try:
            wait_until(lambda: streaming(store, sim), 10, what="the phone's stream")
            now = time.time()
            mailing = requests.post(f"{api}/mailings", headers=headers, timeout=5, json={
                "start_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "end_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
                "text": "Upis počinje sutra.", "filter": {"tags": ["t"]}}).json()
            wait_until(lambda: len(sim.local) == 3, 10, what="the phone's pull")
            assert requests.post(f"{api}/mailings/{mailing['id']}/cancel", headers=headers, timeout=5).ok
            wait_until(lambda: [kind for _, kind in sim.events].count("MessageCancelled") == 3, 5,
                       what="MessageCancelled")
            messages = requests.get(f"{api}/mailings/{mailing['id']}/messages", headers=headers, timeout=5).json()
            ids = [item["id"] for item in messages["items"]]
            wait_until(lambda: set(statuses(store, ids)) == {"CANCELED"}, 10, what="CANCELED")
            assert sim.radio == []
        finally:
            sim.stop()


def test_phones_are_listed_disabled_and_revoked_from_the_api_and_the_command_line(phone_settings):
    app = create_app(phone_settings)
    client = app.test_client()
    device = {"User-Agent": USER_AGENT}
    assert client.post("/api/mobile/v1/device", json={"name": "x", "pushToken": None, "simCards": []},
                       headers=device | {"Authorization": "Bearer wrong"}).status_code == 401
    registered = client.post("/api/mobile/v1/device", json={"name": "Google/pixel", "pushToken": None, "simCards": []},
                             headers=device | {"Authorization": f"BEARER {PRIVATE_TOKEN}"})
    assert registered.status_code == 201 and set(registered.json) == {"id", "token", "login", "password"}
    token = registered.json["token"]
    db_bytes = b"".join(p.read_bytes() for p in Path(phone_settings["DATA_DIR"]).glob("*.db*"))
    assert token.encode() not in db_bytes
    auth = device | {"Authorization": f"Bearer {token}"}
    assert client.patch("/api/mobile/v1/device", json={"id": "999", "pushToken": None, "simCards": None},
                        headers=auth).status_code == 403
    assert client.get("/api/mobile/v1/message", headers=auth).json == []
    store = settings_store(phone_settings)
    _, admin = api_keys.create(store, "admin", ["admin"], None)
    _, reader = api_keys.create(store, "reader", ["read"], None)
    assert client.get("/api/v1/phones", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    listed = client.get("/api/v1/phones", headers={"Authorization": f"Bearer {admin}"}).json["items"]
    assert [(p["name"], p["state"], p["app_version"]) for p in listed] == [("Google/pixel", "online", "1.68.0")]
    assert "Google/pixel" in run_command(phone_settings, "phones", "list").stdout
    assert run_command(phone_settings, "phones", "disable", registered.json["id"]).returncode == 0
    refused = client.get("/api/mobile/v1/message", headers=auth)
    assert refused.status_code == 403 and refused.json["status"] == "error"
    revoked = client.post(f"/api/v1/phones/{registered.json['id']}/revoke",
                          headers={"Authorization": f"Bearer {admin}"})
    assert revoked.json["state"] == "disabled"
    assert client.get("/api/mobile/v1/message", headers=auth).status_code == 401
    assert run_command(phone_settings, "phones", "revoke", "42").returncode == 1
    log = (Path(phone_settings["DATA_DIR"]) / "sms_bulk_app.log").read_text()
    assert token not in log and PRIVATE_TOKEN not in log


def test_sim_cards_of_odd_types_are_dropped_and_the_phones_stay_listable(phone_settings):
    """A phone registering with {"slotIndex": "x"} made GET /api/v1/phones answer 500 for good."""
    client = create_app(phone_settings).test_client()
    device = {"User-Agent": USER_AGENT, "Authorization": f"Bearer {PRIVATE_TOKEN}"}
    cards = [{"slotIndex": "x", "simNumber": True, "phoneNumber": 5, "carrierName": "MTS"},
             {"slotIndex": {"a": 1}, "simNumber": 2, "phoneNumber": "+381641234567"}]
    assert client.post("/api/mobile/v1/device", json={"name": "odd", "pushToken": None, "simCards": cards},
                       headers=device).status_code == 201
    _, admin = api_keys.create(settings_store(phone_settings), "admin", ["admin"], None)
    listed = client.get("/api/v1/phones", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200
    assert listed.json["items"][0]["sim_cards"] == [
        {"slotIndex": None, "simNumber": None, "carrierName": "MTS", "phoneNumber": None},
        {"slotIndex": None, "simNumber": 2, "carrierName": None, "phoneNumber": "+381*******67"}]
