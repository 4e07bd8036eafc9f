"""Delivery reports that gateways POST to us: /callbacks/twilio.

Twilio signs each status callback in X-Twilio-Signature with the account's auth token over the
URL it called and the form fields. The URL is rebuilt from PUBLIC_URL, not from the request's
Host: behind nginx that is not the URL Twilio called.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from flask import Blueprint, Response, current_app, request

from errors import ApiError, read_body
from providers import Delivery
from providers.twilio import CALLBACK_PATH, callback_url, report_for
from store import DELIVERED, FAILED, UNDELIVERED

log = logging.getLogger("sms_bulk_app")

bp = Blueprint("callbacks", __name__)

FINAL = {Delivery.DELIVERED: DELIVERED, Delivery.UNDELIVERED: UNDELIVERED, Delivery.FAILED: FAILED}


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """base64(HMAC-SHA1(auth token, URL + name + value for each field)), as Twilio computes it:
    names sorted, and a name given more than once contributes its distinct values, sorted."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    signed = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid_twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str) -> bool:
    """Twilio's own validator: the URL signed with its port removed, or with the scheme's default
    port added, is accepted (Twilio signs one or the other); compared in constant time."""
    params = list(params)
    parts = urlsplit(url)
    host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    without_port = parts._replace(netloc=host).geturl()
    with_port = url if parts.port else parts._replace(
        netloc=f"{parts.netloc}:{443 if parts.scheme == 'https' else 80}").geturl()
    given = signature.encode()
    return any([hmac.compare_digest(twilio_signature(auth_token, candidate, params).encode(), given)
                for candidate in (without_port, with_port)])


@bp.post(CALLBACK_PATH)
def twilio_status() -> Response:
    """A status callback: checked, then recorded if final; answered at once with an empty 204."""
    services = current_app.extensions["sms_bulk_app"]
    config = services.config
    settings = config.provider_settings.get("twilio")
    if settings is None or not config.public_url:
        raise ApiError(404, "Twilio callbacks need twilio in SMS_PROVIDERS and PUBLIC_URL")
    body = read_body(current_app.config["MAX_CONTENT_LENGTH"])
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the body must be form fields (application/x-www-form-urlencoded)")
    url = callback_url(config.public_url)
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not valid_twilio_signature(settings["AUTH_TOKEN"], url, params, signature):
        log.warning("Twilio callback from %s refused: %s X-Twilio-Signature", request.remote_addr,
                    "a wrong" if signature else "no")
        raise ApiError(403, "missing or wrong X-Twilio-Signature")
    fields = dict(params)
    sid, status = fields.get("MessageSid", ""), fields.get("MessageStatus", "")
    if not sid or not status:
        raise ApiError(400, "MessageSid and MessageStatus are required")
    report = report_for(status, fields.get("ErrorCode"))
    final = FINAL.get(report.state)
    if final is None:
        log.debug("Twilio callback: %s is %s (not final)", sid, status)
    else:
        services.store.record_pushed_report("twilio", sid, final, report.description, time.time())
        log.info("Twilio callback: %s is %s", sid, report.description)
    return Response(status=204)
