"""Templates: versions, approval by scope (or the command line), the sample's encoding and parts,
and their use by POST /messages, mailings and webhook events, of approved versions only."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import api_keys
from config import ConfigError, load_config
from sms_bulk_app import create_app
from tests.conftest import load_fixture, run_command

WRITER = ["read", "templates:write", "messages:send", "mailings:write"]
APPROVER = ["read", "templates:approve"]


class Keys:
    """The app's test client with a key that writes drafts and one that approves."""

    def __init__(self, app):
        self.app, self.client = app, app.test_client()
        self.store = app.extensions["sms_bulk_app"].store
        self.writer = api_keys.create(self.store, "writer", WRITER, None)[1]
        self.approver = api_keys.create(self.store, "boss", APPROVER + ["templates:write"], None)[1]

    def call(self, method: str, path: str, key: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {key or self.writer}"}
        return self.client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)

    def template(self, name: str, text: str, approved: bool = False) -> dict:
        response = self.call("POST", "/templates", self.approver if approved else None,
                             json={"name": name, "text": text})
        assert response.status_code == 201, response.get_json()
        return response.get_json()


@pytest.fixture
def keys(settings):
    return Keys(create_app(settings))


def test_a_writers_template_is_a_draft_until_a_key_with_the_scope_approves_it(keys):
    created = keys.template("otp", "Vaš kod je {CODE}.")
    assert (created["version"], created["status"], created["approved_version"]) == (1, "draft", None)
    assert created["variables"] == ["CODE"]

    refused = keys.call("POST", f"/templates/{created['id']}/approve")
    assert refused.status_code == 403 and "templates:approve" in refused.get_json()["message"]

    approved = keys.call("POST", f"/templates/{created['id']}/approve", keys.approver).get_json()
    assert (approved["status"], approved["approved_version"], approved["approved_text"]) == \
        ("approved", 1, "Vaš kod je {CODE}.")


def test_a_key_that_may_approve_writes_approved_versions(keys):
    created = keys.template("news", "Sutra nema nastave.", approved=True)
    assert (created["status"], created["approved_version"]) == ("approved", 1)
    edited = keys.call("PATCH", f"/templates/{created['id']}", keys.approver,
                       json={"text": "Prekosutra nema nastave."})
    assert (edited.get_json()["version"], edited.get_json()["approved_version"]) == (2, 2)


def test_every_edit_is_a_version_and_the_approved_one_stays_in_use_until_the_next_is_approved(keys):
    template_id = keys.template("otp", "Kod {CODE}", approved=True)["id"]
    edited = keys.call("PATCH", f"/templates/{template_id}", json={"text": "Vaš novi kod: {CODE}"}).get_json()
    assert (edited["version"], edited["status"], edited["approved_version"], edited["approved_text"]) == \
        (2, "draft", 1, "Kod {CODE}")
    unchanged = keys.call("PATCH", f"/templates/{template_id}", json={"text": "Vaš novi kod: {CODE}"}).get_json()
    assert unchanged["version"] == 2  # the same text again makes no version

    sent = keys.call("POST", "/messages", json={"phone": "0641234567", "template": "otp", "variables": {"CODE": "7"}})
    assert sent.status_code == 202
    assert keys.store.message(sent.get_json()["id"])["text"] == "Kod 7"  # the approved version, not the draft

    stale = keys.call("POST", f"/templates/{template_id}/approve?version=1", keys.approver)
    assert stale.status_code == 409 and "the latest is 2" in stale.get_json()["message"]
    keys.call("POST", f"/templates/{template_id}/approve?version=2", keys.approver)
    history = keys.call("GET", f"/templates/{template_id}/versions").get_json()["items"]
    assert [(v["version"], v["text"], v["status"], v["created_by"], v["approved_by"]) for v in history] == [
        (1, "Kod {CODE}", "approved", "boss", "boss"), (2, "Vaš novi kod: {CODE}", "approved", "writer", "boss")]
    assert keys.call("GET", "/templates").get_json()["items"][0]["approved_version"] == 2
    assert keys.call("GET", "/templates/99/versions").status_code == 404


def test_the_sample_shows_the_encoding_and_parts(keys):
    gsm = keys.template("gsm", "Zdravo {first_name}, kod {CODE}.")
    assert gsm["sample"] == {"text": "Zdravo first_name, kod CODE.", "encoding": "GSM-7", "parts": 1}
    long_cyrillic = keys.template("ucs", "Ћирилица {CODE} " + "ш" * 70)
    assert (long_cyrillic["sample"]["encoding"], long_cyrillic["sample"]["parts"]) == ("UCS-2", 2)
    assert keys.call("GET", f"/templates/{gsm['id']}").get_json()["sample"]["parts"] == 1


def test_bad_names_texts_and_a_taken_name_are_refused(keys):
    keys.template("otp", "Kod {CODE}")
    assert keys.call("POST", "/templates", json={"name": "otp", "text": "x"}).status_code == 409
    bad_name = keys.call("POST", "/templates", json={"name": "Has Space", "text": "x"})
    assert bad_name.status_code == 400 and "name" in bad_name.get_json()["errors"]
    unknown = keys.call("POST", "/templates", json={"name": "x", "text": "Hi {nickname}"}).get_json()
    assert "unknown placeholder {nickname}" in unknown["errors"]["text"]
    assert keys.call("POST", "/templates", json={"name": "y", "text": "Hi {CODE:>5}"}).status_code == 400


def test_a_draft_is_refused_by_post_messages_and_mailings(keys):
    keys.template("otp", "Kod {CODE}")
    refused = keys.call("POST", "/messages",
                        json={"phone": "0641234567", "template": "otp", "variables": {"CODE": "1"}})
    assert refused.status_code == 400
    assert "has no approved version yet" in refused.get_json()["errors"]["template"]
    now = datetime.now(UTC)
    mailing = {"start_at": now.isoformat(), "end_at": (now + timedelta(hours=1)).isoformat(), "template": "otp",
               "filter": {"all": True}}
    assert keys.call("POST", "/mailings", json=mailing).status_code == 400
    assert keys.store.counts()["QUEUED"] == 0


def test_post_messages_with_variables_and_a_mailing_from_a_template(keys):
    keys.template("otp", "Kod {CODE}", approved=True)
    missing = keys.call("POST", "/messages", json={"phone": "0641234567", "template": "otp"}).get_json()
    assert missing["errors"] == {"variables": "missing variable CODE"}
    both = keys.call("POST", "/messages", json={"phone": "0641234567", "template": "otp", "text": "x"})
    assert both.status_code == 400

    keys.template("welcome", "Zdravo {first_name}, upis počinje sutra.", approved=True)
    now = datetime.now(UTC)
    body = {"start_at": now.isoformat(), "end_at": (now + timedelta(hours=1)).isoformat(), "filter": {"all": True}}
    mailing = keys.call("POST", "/mailings", json=body | {"template": "welcome"})
    assert mailing.status_code == 201, mailing.get_json()
    assert mailing.get_json()["text"] == "Zdravo {first_name}, upis počinje sutra."
    unfit = keys.call("POST", "/mailings", json=body | {"template": "otp"}).get_json()
    assert "uses {CODE}, which a mailing cannot fill" in unfit["errors"]["template"]


def test_an_event_naming_a_draft_is_ignored_and_sends_the_approved_version_once_approved(settings, moyklass,
                                                                                      oneclick):
    settings["SMS_TEXT_USER_BIRTHDAY"] = "template:birthday"
    keys = Keys(create_app(settings))
    moyklass.add_user(1003, "381641000003", name="Ana Ilić")
    template_id = keys.template("birthday", "Srećan rođendan, {first_name}!")["id"]

    ignored = keys.client.post("/webhook", json=load_fixture("user_birthday")).get_json()
    assert ignored["status"] == "ignored"
    assert ignored["reason"].startswith("SMS_TEXT_USER_BIRTHDAY=template:birthday: template 'birthday' has no"
                                        " approved version yet")
    assert oneclick.messages == []

    keys.call("POST", f"/templates/{template_id}/approve", keys.approver)
    keys.call("PATCH", f"/templates/{template_id}", json={"text": "A draft nobody approved, {first_name}"})
    sent = keys.client.post("/webhook", json=load_fixture("user_birthday"))
    assert sent.status_code == 200, sent.get_json()
    assert oneclick.messages[0]["message"] == "Srećan rođendan, Ana!"


def test_an_event_template_with_fields_the_event_lacks_fails_at_send(settings, moyklass):
    settings["SMS_TEXT_USER_BIRTHDAY"] = "template:birthday"
    keys = Keys(create_app(settings))
    keys.template("birthday", "Uplata {summa} primljena", approved=True)
    answer = keys.client.post("/webhook", json=load_fixture("user_birthday")).get_json()
    assert answer["status"] == "ignored"
    assert "uses {summa}, which the event user_birthday cannot fill" in answer["reason"]


def test_a_bad_template_name_in_sms_text_stops_the_start():
    with pytest.raises(ConfigError, match="SMS_TEXT_USER_BIRTHDAY: 'Bad Name' is not a template name"):
        load_config({"SMS_TEXT_USER_BIRTHDAY": "template:Bad Name"})
    assert load_config({"SMS_TEXT_USER_BIRTHDAY": "template:birthday"}).sending_events()["user_birthday"] == \
        "SMS_TEXT_USER_BIRTHDAY=template:birthday"


def test_the_command_line_lists_and_approves(settings):
    keys = Keys(create_app(settings))
    template_id = keys.template("otp", "Kod {CODE}")["id"]
    listed = run_command(settings, "templates", "list")
    assert listed.returncode == 0 and "otp" in listed.stdout and "none approved" in listed.stdout
    approved = run_command(settings, "templates", "approve", str(template_id))
    assert approved.returncode == 0, approved.stderr
    assert "version 1 approved" in approved.stdout
    assert keys.call("GET", f"/templates/{template_id}").get_json()["status"] == "approved"
    assert run_command(settings, "templates", "approve", "99").returncode == 1


def test_keys_create_takes_and_shows_the_template_scopes(settings):
    created = run_command(settings, "keys", "create", "--name", "editor", "--scopes",
                          "read,templates:write,templates:approve")
    assert created.returncode == 0, created.stderr
    assert "templates:approve" in run_command(settings, "keys", "create", "--help").stdout
