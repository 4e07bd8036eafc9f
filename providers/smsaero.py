"""SMS Aero (Russia), API v2: JSON POSTs with HTTP Basic auth, and fallback gates."""
from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from http_client import HttpAnswer, KeepAliveClient, Unreachable
from phones import international_digits
from providers.base import Delivery, DeliveryReport, Outcome, Provider, SendResult, Setting, Shared

# The gates SMS Aero's own client tries in this order when one cannot be reached.
SMSAERO_GATES = ("https://gate.smsaero.ru/v2", "https://gate.smsaero.org/v2", "https://gate.smsaero.net/v2")


class SmsAeroProvider(Provider):
    """SMS Aero: `{"success": true, "data": {...}}` means accepted; "no credits" pauses sending.

    A gate that cannot be connected to is skipped for the next one; a gate that took the request
    and then went silent is not (the SMS may be on its way): that send's outcome is unknown.
    """

    name = "smsaero"
    settings = (
        Setting("EMAIL", required=True, help="the login of the SMS Aero account"),
        Setting("API_KEY", required=True, secret=True, help="cabinet > settings > API key"),
        Setting("SIGN", help="an approved sender name; unset: SMS_SENDER (\"SMS Aero\" is the free one)"),
        Setting("API_URL", kind="url",
                help="one gate, e.g. https://gate.smsaero.ru/v2; unset: .ru, then .org, then .net"),
    )
    supports_delivery_reports = True
    # sms/status `status` -> what it means; 0 queue, 3 sent, 4 waiting, 8 moderation are not final.
    REPORT_STATES = {1: Delivery.DELIVERED, 2: Delivery.UNDELIVERED, 6: Delivery.FAILED}

    def __init__(self, email: str, api_key: str, sign: str | None, gates: list[KeepAliveClient]):
        self.gates = gates
        self._gate = 0  # the gate that answered last: the first one tried
        self.sign = sign
        credentials = base64.b64encode(f"{email}:{api_key}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}",
                         "Content-Type": "application/json; charset=utf-8"}

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], shared: Shared) -> SmsAeroProvider:
        urls = [values["API_URL"]] if values.get("API_URL") else list(SMSAERO_GATES)
        return cls(values["EMAIL"], values["API_KEY"], values.get("SIGN"),
                   [KeepAliveClient(url, shared.http_timeouts) for url in urls])

    def format_phone(self, phone: str) -> str:
        return international_digits(phone)

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        body = {"number": int(self.format_phone(phone)), "text": text, "sign": self.sign or sender}
        try:
            response = self._post("sms/send", body)
        except Unreachable as error:
            outcome = Outcome.UNKNOWN if error.reached else Outcome.TRANSIENT
            return SendResult(outcome, code=error.code, message=f"SMS Aero: {error}")
        return self._verdict(response)

    def delivery_report(self, reference: str) -> DeliveryReport:
        try:
            answer = self._post("sms/status", {"id": int(reference)}).json()
            data = answer["data"]
            status = int(data["status"])
        except (Unreachable, ValueError, KeyError, TypeError) as error:
            return DeliveryReport(Delivery.PENDING, f"no report this time ({type(error).__name__})")
        description = str(data.get("extendStatus") or status)
        return DeliveryReport(self.REPORT_STATES.get(status, Delivery.PENDING), description)

    def _post(self, selector: str, body: dict[str, Any]) -> HttpAnswer:
        """POST to the gate that answered last, else to the next ones in turn; Unreachable if none did."""
        first, failure = self._gate, Unreachable("connection", "no gate to ask")
        for step in range(len(self.gates)):
            index = (first + step) % len(self.gates)
            gate = self.gates[index]
            try:
                answer = gate.post_json(f"{gate.path.rstrip('/')}/{selector}", body, self._headers)
            except Unreachable as error:
                if error.reached:
                    raise
                failure = error
                continue
            self._gate = index  # one int: threads that race here each store a gate that answered
            return answer
        raise failure

    def _verdict(self, response: HttpAnswer) -> SendResult:
        http = response.status
        try:
            answer = response.json()
            if not isinstance(answer, dict):
                raise TypeError("the answer is not a JSON object")
        except (ValueError, TypeError):
            answer = None
        if answer is not None and answer.get("result") == "no credits":
            return SendResult(Outcome.AUTH, code="no-credits", message="SMS Aero: the balance is empty (no credits)")
        if http in (401, 403):
            return SendResult(Outcome.AUTH, code=f"http-{http}", message="SMS Aero refused the email or API key")
        if http == 429 or http >= 500:
            return SendResult(Outcome.TRANSIENT, code=f"http-{http}", message=f"SMS Aero answered HTTP {http}")
        if answer is None:
            outcome = Outcome.REJECTED if 400 <= http < 500 else Outcome.UNKNOWN
            return SendResult(outcome, code=f"http-{http}",
                              message=f"SMS Aero answered HTTP {http} without a JSON verdict")
        if answer.get("result") == "reject":
            return SendResult(Outcome.REJECTED, code="reject", message=f"SMS Aero: {answer.get('reason') or 'reject'}")
        data = answer.get("data")
        if answer.get("success") is True and isinstance(data, dict) and data.get("id") is not None:
            return SendResult(Outcome.SENT, reference=str(data["id"]), code=str(data.get("status", "")),
                              message=str(data.get("extendStatus") or ""))
        return SendResult(Outcome.REJECTED, code=f"http-{http}",
                          message=f"SMS Aero: {answer.get('message') or 'not accepted'}")
