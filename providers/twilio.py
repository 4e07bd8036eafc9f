"""Twilio Programmable Messaging: the 2010-04-01 REST API, form-encoded, HTTP Basic auth.

Delivery reports: with PUBLIC_URL set, each message asks Twilio to POST its status changes to
PUBLIC_URL + /callbacks/twilio (callbacks.py checks their signature and records them), and Twilio
is never polled: polling too would double the calls to Twilio for every message. Without
PUBLIC_URL, nothing can call back, so the worker polls GET Messages/{sid}.json instead.
"""
from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from http_client import HttpAnswer, KeepAliveClient, Unreachable
from phones import mask_phones_in
from providers.base import Delivery, DeliveryReport, Outcome, Provider, SendResult, Setting, Shared

TWILIO_API_URL = "https://api.twilio.com"
CALLBACK_PATH = "/callbacks/twilio"  # where Twilio POSTs status changes (callbacks.py)
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")

# Twilio's MessageStatus (the callback's, and `status` of a Message) -> what it says about a sent
# message. The others (queued, sending, sent, accepted, scheduled, ...) are not final.
FINAL_STATES = {
    "delivered": Delivery.DELIVERED,
    "read": Delivery.DELIVERED,  # WhatsApp: read, so delivered
    "undelivered": Delivery.UNDELIVERED,
    "failed": Delivery.FAILED,
    "canceled": Delivery.FAILED,  # a scheduled message cancelled before it went out
}


def callback_url(public_url: str) -> str:
    """The StatusCallback given to Twilio: the URL Twilio signs when it calls back."""
    return public_url.rstrip("/") + CALLBACK_PATH


def report_for(status: str, error_code: Any = None) -> DeliveryReport:
    """A Twilio message status (with its ErrorCode, if any) as a delivery report."""
    description = f"Twilio: {status}" + (f" (error {error_code})" if error_code not in (None, "", 0) else "")
    return DeliveryReport(FINAL_STATES.get(status, Delivery.PENDING), description)


class TwilioProvider(Provider):
    """Twilio: a 201 with a Message `sid` means accepted; errors are `{code, message, more_info, status}`."""

    name = "twilio"
    settings = (
        Setting("ACCOUNT_SID", required=True, help="AC followed by 32 hex digits"),
        Setting("AUTH_TOKEN", required=True, secret=True),
        Setting("FROM", help="the sending number (+E.164) or alphanumeric sender ID; or MESSAGING_SERVICE_SID"),
        Setting("MESSAGING_SERVICE_SID", help="MG followed by 32 hex digits; or FROM"),
        Setting("API_URL", default=TWILIO_API_URL, kind="url"),
    )
    max_segments = 10  # Twilio's own limit is 1,600 characters; 10 parts keep the cost bounded
    AUTH_CODES = frozenset({
        20003,  # authentication failed
        21212,  # the From number is invalid
        21606,  # the From number is not one of the account's SMS-capable numbers
    })
    # A 4xx not listed (21211 invalid To, 21614 not a mobile number, 21610 unsubscribed,
    # 21408 region not enabled, ...) is about this message: REJECTED.
    TRANSIENT_CODES = frozenset({20429})  # too many requests

    def __init__(self, account_sid: str, auth_token: str, sender: Mapping[str, str], http: KeepAliveClient,
                 public_url: str | None):
        self._http = http
        self._sender = dict(sender)  # From and/or MessagingServiceSid
        self._headers = {
            "Authorization": "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        self.messages_path = f"{http.path.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages"
        self.status_callback = callback_url(public_url) if public_url else None
        # Per instance, not per class: whether reports are pushed depends on PUBLIC_URL (see above).
        self.pushes_delivery_reports = self.status_callback is not None
        self.supports_delivery_reports = not self.pushes_delivery_reports

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> list[str]:
        problems = []
        if values.get("ACCOUNT_SID") and not ACCOUNT_SID.match(values["ACCOUNT_SID"]):
            problems.append("TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits")
        if not values.get("FROM") and not values.get("MESSAGING_SERVICE_SID"):
            problems.append("TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID is required when twilio is used")
        if values.get("MESSAGING_SERVICE_SID") and not MESSAGING_SERVICE_SID.match(values["MESSAGING_SERVICE_SID"]):
            problems.append("TWILIO_MESSAGING_SERVICE_SID must be MG followed by 32 hex digits")
        return problems

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], shared: Shared) -> TwilioProvider:
        problems = cls.problems(values)
        if problems:
            raise ValueError("; ".join(problems))
        sender = {"From": values.get("FROM"), "MessagingServiceSid": values.get("MESSAGING_SERVICE_SID")}
        return cls(values["ACCOUNT_SID"], values["AUTH_TOKEN"], {k: v for k, v in sender.items() if v},
                   KeepAliveClient(values["API_URL"], shared.http_timeouts), shared.public_url)

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        """`sender` (SMS_SENDER) is not used: Twilio sends only from TWILIO_FROM or the Messaging Service."""
        fields = {"To": self.format_phone(phone), "Body": text, **self._sender}
        if self.status_callback:
            fields["StatusCallback"] = self.status_callback
        try:
            response = self._http.request("POST", f"{self.messages_path}.json", self._headers,
                                          urlencode(fields).encode())
        except Unreachable as error:
            outcome = Outcome.UNKNOWN if error.reached else Outcome.TRANSIENT
            return SendResult(outcome, code=error.code, message=f"Twilio: {error}")
        return self._verdict(response)

    def delivery_report(self, reference: str) -> DeliveryReport:
        """Polled only without PUBLIC_URL; with it, reports come as callbacks."""
        try:
            response = self._http.request("GET", f"{self.messages_path}/{quote(reference, safe='')}.json",
                                          self._headers)
            if response.status == 404:
                return DeliveryReport(Delivery.UNKNOWN, "Twilio does not know this message")
            answer = response.json()
            if response.status != 200 or not isinstance(answer, dict):
                raise ValueError(f"HTTP {response.status}")
            return report_for(str(answer["status"]), answer.get("error_code"))
        except (Unreachable, ValueError, KeyError) as error:
            return DeliveryReport(Delivery.PENDING, f"no report this time ({type(error).__name__})")

    def _verdict(self, response: HttpAnswer) -> SendResult:
        http = response.status
        try:
            answer = response.json()
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            answer = {}
        if 200 <= http < 300:
            sid = answer.get("sid")
            if not isinstance(sid, str) or not sid:
                return SendResult(Outcome.UNKNOWN, code=f"http-{http}",
                                  message=f"Twilio answered HTTP {http} without a message sid")
            status = str(answer.get("status") or "")
            if FINAL_STATES.get(status, Delivery.PENDING) is not Delivery.PENDING:  # failed at once
                return SendResult(Outcome.REJECTED, reference=sid, code=str(answer.get("error_code") or status),
                                  message=_safe(f"Twilio: {status}: {answer.get('error_message') or ''}"))
            return SendResult(Outcome.SENT, reference=sid, code=status)
        code = answer.get("code")
        shown = str(code) if code is not None else f"http-{http}"
        message = _safe(f"Twilio answered HTTP {http}: {answer.get('message') or 'no error message'}")
        if http in (401, 403, 404) or code in self.AUTH_CODES:  # 404: no such account (or API URL)
            return SendResult(Outcome.AUTH, code=shown, message=message)
        if http == 429 or http >= 500 or code in self.TRANSIENT_CODES:
            return SendResult(Outcome.TRANSIENT, code=shown, message=message)
        if 400 <= http < 500:
            return SendResult(Outcome.REJECTED, code=shown, message=message)
        return SendResult(Outcome.UNKNOWN, code=shown, message=message)  # 1xx/3xx: it may have been taken


def _safe(text: str) -> str:
    """Twilio's error messages quote the number ("The 'To' number +1... is not valid"): masked."""
    return mask_phones_in(text)
