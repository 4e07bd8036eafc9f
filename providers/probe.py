"""The "probe" API of the notification-service seeds (Fabrique's test gateway): one JSON POST per SMS."""
from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from http_client import HttpAnswer, KeepAliveClient, Unreachable
from phones import international_digits
from providers.base import Outcome, Provider, SendResult, Setting, Shared

PROBE_API_URL = "https://probe.fbrq.cloud/v1"


class ProbeProvider(Provider):
    """`POST /send/{msgId}` with a Bearer JWT and `{"id", "phone", "text"}`; `{"code": 0}` means accepted.

    The API takes no sender and has no delivery reports. `msgId` is ours: a new random id per
    send (the provider is not told the outbox's id), kept as the message's reference.
    """

    name = "probe"
    settings = (
        Setting("TOKEN", required=True, secret=True, help="the JWT the API issued"),
        Setting("API_URL", default=PROBE_API_URL, kind="url", help="the base; /send/{msgId} is added"),
    )

    def __init__(self, token: str, http: KeepAliveClient):
        self._http = http
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                         "Accept": "application/json"}

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], shared: Shared) -> ProbeProvider:
        return cls(values["TOKEN"], KeepAliveClient(values["API_URL"], shared.http_timeouts))

    def format_phone(self, phone: str) -> str:
        return international_digits(phone)

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        message_id = secrets.randbits(62) + 1  # int64, positive
        body = {"id": message_id, "phone": int(self.format_phone(phone)), "text": text}
        try:
            response = self._http.post_json(f"{self._http.path.rstrip('/')}/send/{message_id}", body, self._headers)
        except Unreachable as error:
            outcome = Outcome.UNKNOWN if error.reached else Outcome.TRANSIENT
            return SendResult(outcome, code=error.code, message=f"probe: {error}")
        return self._verdict(response, str(message_id))

    def _verdict(self, response: HttpAnswer, reference: str) -> SendResult:
        http = response.status
        if http in (401, 403):
            return SendResult(Outcome.AUTH, code=f"http-{http}", message="probe refused the token (PROBE_TOKEN)")
        if http == 429 or http >= 500:
            return SendResult(Outcome.TRANSIENT, code=f"http-{http}", message=f"probe answered HTTP {http}")
        if 400 <= http < 500:
            return SendResult(Outcome.REJECTED, code=f"http-{http}",
                              message=f"probe refused the message: HTTP {http} {self._excerpt(response.body)}")
        try:
            answer = response.json()
            code = int(answer["code"])
        except (ValueError, KeyError, TypeError):
            return SendResult(Outcome.UNKNOWN, code=f"http-{http}",
                              message=f"probe answered HTTP {http} without a code we can read")
        message = str(answer.get("message") or "")
        if code == 0:
            return SendResult(Outcome.SENT, reference=reference, code="0", message=message)
        return SendResult(Outcome.REJECTED, reference=reference, code=str(code), message=f"probe: {message}")

    def _excerpt(self, body: bytes) -> str:
        """The start of an error answer, one line, for the journal; the token, if echoed, hidden."""
        return " ".join(body.decode("utf-8", "replace").replace(self._token, "***").split())[:200]
