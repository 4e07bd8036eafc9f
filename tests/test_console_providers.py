"""The console's providers and phones page: health as /health gives it, an admin's pause and resume
through the worker's own store functions, the phones' health, enrollment (admins only), disable, revoke."""
from __future__ import annotations

import time

import pytest

import devices
from console import accounts
from sms_bulk_app import create_app
from tests.test_console_auth import PASSWORD, csrf_token, log_in

PRIVATE_TOKEN = "private-token-for-the-phones-0123456789"


def _client(app, role: str):
    store = app.extensions["sms_bulk_app"].store
    accounts.create(store, f"{role}@school.rs", role, PASSWORD, time.time())
    client = app.test_client()
    log_in(client, f"{role}@school.rs", PASSWORD)
    return client


def test_an_admin_pauses_and_resumes_a_provider_as_the_worker_would(app):
    admin, viewer = _client(app, accounts.ADMIN), _client(app, accounts.VIEWER)
    store = app.extensions["sms_bulk_app"].store
    page = admin.get("/providers").data.decode()
    assert 'id="provider-oneclick"' in page and "healthy" in page
    token = csrf_token(page.encode())
    assert admin.post("/providers/oneclick/pause", data={"hours": "1", "csrf_token": token}).status_code == 302
    state = store.provider_states()["oneclick"]
    assert state.paused_until == pytest.approx(time.time() + 3600, abs=60) and "console" in state.pause_reason
    health = app.test_client().get("/health")  # the same health, one way: /health sees the pause
    assert health.status_code == 503 and health.get_json()["providers"]["oneclick"]["state"] == "paused"
    seen = viewer.get("/providers").data.decode()
    assert "paused in the console by user 1" in seen and "Resume" not in seen  # viewers read, admins act
    assert admin.post("/providers/oneclick/resume", data={"csrf_token": token}).status_code == 302
    assert "oneclick" not in store.provider_states()
    assert app.test_client().get("/health").status_code == 200


@pytest.fixture
def phone_app(settings):
    return create_app(settings | {"SMS_PROVIDERS": "android,oneclick", "PHONES_PRIVATE_TOKEN": PRIVATE_TOKEN,
                                  "PUBLIC_URL": "https://sms.school.rs"})


def test_phones_health_enrollment_for_admins_only_disable_and_revoke(phone_app, caplog):
    admin, operator = _client(phone_app, accounts.ADMIN), _client(phone_app, accounts.OPERATOR)
    store = phone_app.extensions["sms_bulk_app"].store
    settings = devices.PhoneSettings.of(phone_app.extensions["sms_bulk_app"].config)
    registered = devices.register(store, settings, f"Bearer {PRIVATE_TOKEN}", {"name": "Office phone"},
                                  "SMS Gateway for Android/1.68.0", time.time())
    phone_id = int(registered["id"])
    page = admin.get("/providers").data.decode()
    assert f'id="phone-{phone_id}"' in page and "Office phone" in page and "online" in page
    assert '<code id="phone-server">https://sms.school.rs/api/mobile/v1</code>' in page
    assert f'<code id="phone-token">{PRIVATE_TOKEN}</code>' in page
    assert PRIVATE_TOKEN not in operator.get("/providers").data.decode()  # admins only
    assert 'action="/providers/android/pause"' not in page  # the phones' pool stops by disabling phones

    token = csrf_token(page.encode())
    assert operator.post(f"/phones/{phone_id}/disable", data={"csrf_token": token}).status_code in (400, 403)
    assert admin.post(f"/phones/{phone_id}/disable", data={"csrf_token": token}).status_code == 302
    assert admin.post(f"/phones/{phone_id}/revoke", data={"csrf_token": token}).status_code == 302
    device = store.device(phone_id)
    assert device.disabled_at is not None and device.revoked
    assert [entry.action for entry in store.audit_entries(None, "phone.disable", None, None, None, 10)] == \
        ["phone.disable"]
    assert len(store.audit_entries(None, "phone.revoke", None, None, None, 10)) == 1
    assert admin.post("/phones/999/disable", data={"csrf_token": token}).status_code == 404
    assert PRIVATE_TOKEN not in caplog.text
