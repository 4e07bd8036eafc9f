"""The device API of SMS Gateway for Android (private server mode) at /api/mobile/v1, and the
phones' administration at /api/v1/phones (admin scope, declared on api's blueprint).

What the app calls (its GatewayApi, v1.68.0): POST /device (register with the private token),
PATCH /device, GET /message, PATCH /message, GET /webhooks, GET /settings; GET /events is served
by the event stream process (phones_events.py), which nginx routes it to. The domain is devices.py.
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel

import audit
import devices
from api import _answer, _services, endpoint
from bodies import InvalidJson, parse_json
from errors import ApiError, read_body
from schemas import Error

MAX_DEVICE_BODY = 64 * 1024
PING_SECONDS = 60  # GET /settings: a phone also polls this often, so one whose stream broke is still seen

bp = Blueprint("phones_api", __name__, url_prefix="/api/mobile/v1")


def _settings() -> devices.PhoneSettings:
    settings = devices.PhoneSettings.of(_services().config)
    if settings is None:
        raise ApiError(404, "phones are not enabled here: add android to SMS_PROVIDERS and set PHONES_PRIVATE_TOKEN")
    return settings


def _json() -> Any:
    try:
        return parse_json(read_body(MAX_DEVICE_BODY) or b"null")
    except InvalidJson as error:
        raise ApiError(400, str(error))


def _device() -> devices.Device:
    """The calling phone (401, 403 otherwise), with the settings in flask.g."""
    g.phone_settings = _settings()
    return devices.authenticate(_services().store, g.phone_settings, request.headers.get("Authorization", ""),
                                request.headers.get("User-Agent", ""), time.time())


@bp.post("/device")
def register_device():
    answer = devices.register(_services().store, _settings(), request.headers.get("Authorization", ""), _json(),
                              request.headers.get("User-Agent", ""), time.time())
    return jsonify(answer), 201


@bp.patch("/device")
def update_device():
    device = _device()
    devices.update(_services().store, device, _json(), time.time())
    return Response(status=204)


@bp.get("/message")
def get_messages():
    device = _device()
    return jsonify(devices.pull(_services().store, g.phone_settings, device, time.time()))


@bp.patch("/message")
def patch_messages():
    device = _device()
    services = _services()
    devices.report(services.store, g.phone_settings, device, _json(), services.config.sms_max_attempts, time.time())
    return Response(status=204)


@bp.get("/webhooks")
def get_webhooks():
    _device()
    return jsonify([])


@bp.get("/settings")
def get_settings():
    _device()
    return jsonify({"ping": {"interval_seconds": PING_SECONDS}})


@bp.get("/events")
def events_elsewhere():
    """Only reached when nothing routes /events to the event stream process: say where it is."""
    port = _settings().events_port
    raise ApiError(503, f"the event stream is served by `sms_bulk_app.py phones-events` on 127.0.0.1:{port};"
                        " route /api/mobile/v1/events to it (nginx.conf)")


# --- /api/v1/phones: the phones' administration ---

class SimCard(BaseModel):
    slotIndex: int | None = None
    simNumber: int | None = None
    carrierName: str | None = None
    phoneNumber: str | None = None


class Phone(BaseModel):
    id: int
    name: str
    state: str  # online, offline, disabled, revoked
    last_seen: str
    events_connected: bool
    app_version: str | None
    battery: int | None  # the app does not report it in private server mode: always null
    sim_cards: list[SimCard]
    sent_today: int
    failed_today: int
    handed_last_minute: int
    handed_today: int


class PhoneList(BaseModel):
    items: list[Phone]


def phone_health() -> list[dict[str, Any]]:
    return devices.health(_services().store, _settings(), time.time())


@endpoint("GET", "/phones", summary="The phones (SMS Gateway for Android) and their health", scope="admin",
          responses={200: PhoneList, 404: (Error, "Phones are not enabled")})
def list_phones():
    return _answer(PhoneList, {"items": phone_health()})


@endpoint("POST", "/phones/{phone_id}/disable", summary="Disable a phone: it is handed nothing more",
          scope="admin", responses={200: Phone, 404: Error})
def disable_phone(phone_id: int):
    _settings()
    if _services().store.disable_device(phone_id, time.time()):
        audit.record(_services().store, "phone.disable", "phone", phone_id)
    return _answer(Phone, _phone(phone_id))


@endpoint("POST", "/phones/{phone_id}/revoke", summary="Revoke a phone's token: it must register again",
          scope="admin", responses={200: Phone, 404: Error})
def revoke_phone(phone_id: int):
    _settings()
    if _services().store.revoke_device_token(phone_id):
        audit.record(_services().store, "phone.revoke", "phone", phone_id)
    return _answer(Phone, _phone(phone_id))


def _phone(phone_id: int) -> dict[str, Any]:
    found = next((phone for phone in phone_health() if phone["id"] == phone_id), None)
    if found is None:
        raise ApiError(404, f"no phone {phone_id}")
    return found

