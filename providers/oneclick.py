"""OneClick (Serbia): the gateway the first release sent through."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from http_client import HttpAnswer, KeepAliveClient, Unreachable
from phones import international_digits
from providers.base import Delivery, DeliveryReport, Outcome, Provider, SendResult, Setting, Shared

ONECLICK_SEND_URL = "https://sms.oneclick.rs/SmsWebBulkApi/SendMsg.aspx"


class OneClickProvider(Provider):
    """OneClick (Serbia): JSON over HTTPS, `status == 0` in the answer means accepted."""

    name = "oneclick"
    settings = (
        Setting("API_URL", default=ONECLICK_SEND_URL, kind="url", legacy="SMS_API_URL",
                help="SendMsg.aspx; delivery reports are asked of SentMsgDR.aspx beside it"),
        Setting("USERNAME", required=True, legacy="SMS_USERNAME"),
        Setting("PASSWORD", required=True, secret=True, legacy="SMS_PASSWORD"),
    )
    supports_delivery_reports = True
    AUTH_CODES = frozenset({-10, -11, -20, -21, -30, -31})
    REJECTED_CODES = frozenset({-1})
    # SentMsgDR.aspx StatusVal -> what it means for the message; others (5 pending, -200
    # error, -202 credentials, -1 unknown) are asked again later.
    REPORT_STATES = {1: Delivery.DELIVERED, 2: Delivery.UNDELIVERED, 3: Delivery.FAILED,
                     6: Delivery.FAILED, 8: Delivery.FAILED, -201: Delivery.UNKNOWN}

    def __init__(self, username: str, password: str, http: KeepAliveClient):
        self._http = http
        self.report_path = http.path.rsplit("/", 1)[0] + "/SentMsgDR.aspx"
        self._headers = {
            "username": username,
            "pwd": password,
            "Content-Type": "application/json; charset=utf-8",
        }

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], shared: Shared) -> OneClickProvider:
        return cls(values["USERNAME"], values["PASSWORD"], KeepAliveClient(values["API_URL"], shared.http_timeouts))

    def format_phone(self, phone: str) -> str:
        return international_digits(phone)

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        body = {"sender": sender, "message": text, "phone": self.format_phone(phone)}
        try:
            response = self._http.post_json(self._http.path, body, self._headers)
        except Unreachable as error:
            outcome = Outcome.UNKNOWN if error.reached else Outcome.TRANSIENT
            return SendResult(outcome, code=error.code, message=f"OneClick: {error}")
        return self._verdict(response)

    def delivery_report(self, reference: str) -> DeliveryReport:
        try:
            response = self._http.post_json(self.report_path, {"reference": reference}, self._headers)
            answer = _lower_keys(response.json())
            status = int(answer["statusval"])
        except (Unreachable, ValueError, KeyError, TypeError) as error:
            return DeliveryReport(Delivery.PENDING, f"no report this time ({type(error).__name__})")
        description = str(answer.get("description") or answer.get("status") or status)
        return DeliveryReport(self.REPORT_STATES.get(status, Delivery.PENDING), description)

    def _verdict(self, response: HttpAnswer) -> SendResult:
        http = response.status
        if http in (401, 403):
            return SendResult(Outcome.AUTH, code=f"http-{http}", message="OneClick refused the credentials")
        if http == 429 or http >= 500:
            return SendResult(Outcome.TRANSIENT, code=f"http-{http}",
                              message=f"OneClick answered HTTP {http}")
        try:
            answer = _lower_keys(response.json())
            status = int(answer["status"])
        except (ValueError, KeyError, TypeError):
            outcome = Outcome.REJECTED if 400 <= http < 500 else Outcome.TRANSIENT
            return SendResult(outcome, code=f"http-{http}",
                              message=f"OneClick answered HTTP {http} without a status we can read")
        message = str(answer.get("message") or "")
        reference = str(answer.get("reference") or "") or None
        if status == 0:
            return SendResult(Outcome.SENT, reference=reference, code="0", message=message)
        if status in self.AUTH_CODES:
            outcome = Outcome.AUTH
        elif status in self.REJECTED_CODES:
            outcome = Outcome.REJECTED
        else:
            outcome = Outcome.TRANSIENT
        return SendResult(outcome, reference=reference, code=str(status), message=message)


def _lower_keys(answer: Any) -> dict[str, Any]:
    """OneClick's key casing varies between endpoints and versions."""
    if not isinstance(answer, dict):
        raise TypeError("answer is not a JSON object")
    return {str(key).lower(): value for key, value in answer.items()}
