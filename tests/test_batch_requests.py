"""Batch requests: per-recipient rejection, the anti-duplicate window (also under a race), counts
by status, priorities in the claim, and a request sent end to end by the real worker."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

import api_keys
from sms_bulk_app import create_app
from tests.conftest import running_worker, wait_until


class Api:
    def __init__(self, app):
        self.app, self.client = app, app.test_client()
        self.store = app.extensions["sms_bulk_app"].store
        self.key = api_keys.create(self.store, "crm", ["read", "messages:send", "templates:write",
                                                        "templates:approve"], None)[1]

    def call(self, method: str, path: str, client=None, **kwargs):
        return (client or self.client).open(f"/api/v1{path}", method=method,
                                            headers={"Authorization": f"Bearer {self.key}"}, **kwargs)

    def request(self, recipients: list, client=None, **fields):
        return self.call("POST", "/requests", client, json={"template": "otp", "recipients": recipients, **fields})


def otp(phone: str, code: str, **fields) -> dict:
    return {"phone": phone, "variables": {"CODE": code}, **fields}


@pytest.fixture
def api(settings):
    api = Api(create_app(settings))
    assert api.call("POST", "/templates", json={"name": "otp", "text": "Vaš kod je {CODE}"}).status_code == 201
    return api


def test_an_invalid_recipient_is_rejected_alone_with_its_index_and_reason(api):
    response = api.request([otp("0641234567", "1"), {"phone": "not a phone", "variables": {"CODE": "2"}},
                            {"phone": "0641234568"}, otp("0641234569", "3") | {"variables": {"CODE": "3", "X": "4"}},
                            otp("0641234570", "5", priority="urgent"), "not an object",
                            otp("0641234571", "x" * 400), otp("0641234572", "6")])
    assert response.status_code == 201, response.get_json()
    answer = response.get_json()
    assert (answer["queued"], answer["duplicates"], answer["template_version"]) == (2, 0, 1)
    reasons = {item["index"]: item["reason"] for item in answer["rejected"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert reasons[1].startswith("phone: 'not a phone' is not a valid phone number")
    assert reasons[2] == "missing variable CODE"
    assert reasons[3] == "unknown variable X: the template uses CODE"
    assert reasons[4].startswith("priority: Input should be 'high', 'normal' or 'low'")
    assert "the text needs" in reasons[6] and "SMS parts" in reasons[6]
    assert [(m["index"], m["status"]) for m in answer["messages"]] == [(0, "QUEUED"), (7, "QUEUED")]
    assert api.store.message(answer["messages"][1]["id"])["text"] == "Vaš kod je 6"


def test_every_recipient_rejected_queues_nothing_and_a_draft_template_is_refused(api):
    nothing = api.request([{"phone": "x"}])
    assert nothing.status_code == 400
    assert nothing.get_json()["rejected"] == [{"index": 0, "reason": "phone: 'x' is not a valid phone number"
                                                                   " (default region RS)"}]
    api.call("PATCH", "/templates/1", json={"text": "Novi kod {CODE}"})  # approved at once: the key may approve
    api.call("POST", "/templates", json={"name": "draft", "text": "{CODE}"})
    assert api.call("POST", "/requests", json={"template": "nope", "recipients": [otp("0641234567", "1")]}) \
        .get_json()["errors"] == {"template": "no template 'nope'"}
    assert sum(api.store.counts().values()) == 0
    too_many = api.request([otp("0641234567", "1")] * 5001)
    assert too_many.status_code == 400 and "recipients" in too_many.get_json()["errors"]


def test_the_same_phone_and_text_within_the_window_is_canceled_as_a_duplicate(api):
    first = api.request([otp("0641234567", "1"), otp("064 123 4567", "1"), otp("0641234567", "2")]).get_json()
    assert [m["status"] for m in first["messages"]] == ["QUEUED", "CANCELED", "QUEUED"]
    again = api.request([otp("+381641234567", "1")]).get_json()
    assert (again["queued"], again["duplicates"]) == (0, 1)
    canceled = api.store.message(again["messages"][0]["id"])
    assert canceled["status"] == "CANCELED"
    assert canceled["last_error"] == (f"duplicate: the same text went to this phone less than 180 s before"
                                      f" (message {first['messages'][0]['id']})")


def test_outside_the_window_the_same_text_is_sent_again(settings):
    api = Api(create_app(settings | {"DEDUP_SECONDS": "0"}))
    api.call("POST", "/templates", json={"name": "otp", "text": "Kod {CODE}"})
    answer = api.request([otp("0641234567", "1"), otp("0641234567", "1")]).get_json()
    assert answer["duplicates"] == 0


def test_two_identical_requests_at_once_send_once(api):
    """Each thread its own client and database connection; the barrier lines their POSTs up."""
    recipients = [otp(f"06412{n:05d}", "1") for n in range(200)]
    barrier, answers = threading.Barrier(2), []

    def post() -> None:
        client = api.app.test_client()
        barrier.wait()
        answers.append(api.request(recipients, client).get_json())

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(a["queued"] for a in answers) == 200 and sum(a["duplicates"] for a in answers) == 200
    assert api.store.counts()["QUEUED"] == 200 and api.store.counts()["CANCELED"] == 200


def test_counts_by_status(api):
    answer = api.request([otp("0641234567", "1"), otp("0641234567", "1"), {"phone": "x"}]).get_json()
    state = api.call("GET", f"/requests/{answer['id']}").get_json()
    assert (state["recipients"], state["total"], state["counts"]) == (3, 2, {"QUEUED": 1, "CANCELED": 1})
    assert state["rejected"][0]["index"] == 2 and state["template_version"] == 1
    assert api.call("GET", "/requests/99").status_code == 404


def test_priority_and_send_at_order_the_claim(api):
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    api.request([otp("0641234567", "low", priority="low"), otp("0641234568", "normal"),
                 otp("0641234569", "later", send_at=later, priority="high")])
    api.request([otp("0641234570", "high", priority="high")], priority="low")
    api.request([otp("0641234571", "default low")], priority="low")
    claimed = [row["text"] for row in api.store.claim("test", 1, 60)]
    claimed += [row["text"] for row in api.store.claim("test", 10, 60)]
    assert claimed == ["Vaš kod je high", "Vaš kod je normal", "Vaš kod je low", "Vaš kod je default low"]


def test_a_large_request_fits_its_own_body_limit(api):
    recipients = [otp(f"06412{n:05d}", f"{n:06d}") for n in range(5000)]  # about 300 KB
    answer = api.request(recipients)
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["queued"] == 5000


def test_a_request_is_sent_by_the_worker_to_the_gateway(worker_settings, oneclick):
    api = Api(create_app(worker_settings))
    api.call("POST", "/templates", json={"name": "otp", "text": "Vaš kod je {CODE}"})
    answer = api.request([otp("0641234567", "111"), otp("0641234568", "222"), otp("0641234567", "111")]).get_json()
    with running_worker(worker_settings):
        state = wait_until(lambda: (s := api.call("GET", f"/requests/{answer['id']}").get_json())
                           ["counts"].get("SENT", 0) + s["counts"].get("DELIVERED", 0) == 2 and s,
                           what="the request's messages to be sent")
    assert state["counts"].get("CANCELED") == 1
    assert sorted((m["phone"], m["message"]) for m in oneclick.messages) == [
        ("381641234567", "Vaš kod je 111"), ("381641234568", "Vaš kod je 222")]
