"""SMS gateways behind one interface: a class per provider, a registry from name to class.

A provider declares what it is (name, phone format, longest text, delivery reports) and its
`send()` returns a SendResult carrying the gateway's own verdict, never just "HTTP 200".
"""
from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from http_client import HttpAnswer, KeepAliveClient, Unreachable
from phones import international_digits

if TYPE_CHECKING:
    from config import Config

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    SENT = "sent"  # the gateway accepted the message
    REJECTED = "rejected"  # permanent: sending it again cannot help (invalid phone, bad text)
    TRANSIENT = "transient"  # try again later (no connection, 5xx, gateway busy): it was not taken
    UNKNOWN = "unknown"  # the request reached the gateway but no verdict came back: it may have been taken
    AUTH = "auth"  # the gateway refused our credentials or sender: nothing will go out


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    reference: str | None = None
    code: str | None = None  # the gateway's own status code, for the log and the journal
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SENT


class Delivery(enum.Enum):
    """What a delivery report says about a sent message."""

    DELIVERED = "DELIVERED"
    UNDELIVERED = "UNDELIVERED"  # the network could not deliver it
    FAILED = "FAILED"  # the gateway gave up on it (invalid number, blacklisted, sending error)
    PENDING = "PENDING"  # not final yet: ask again later
    UNKNOWN = "UNKNOWN"  # the gateway does not know the message: asking again will not help


@dataclass(frozen=True)
class DeliveryReport:
    state: Delivery
    description: str = ""


class Provider:
    name: ClassVar[str]
    max_segments: ClassVar[int] = 6  # longest text (in SMS parts) the gateway takes
    supports_delivery_reports: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Config) -> Provider:
        return cls()

    def format_phone(self, phone: str) -> str:
        """The gateway's form of an E.164 number; E.164 itself unless a provider says otherwise."""
        return phone

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        raise NotImplementedError

    def delivery_report(self, reference: str) -> DeliveryReport:
        """Only for providers that declare `supports_delivery_reports`."""
        raise NotImplementedError


class ConsoleProvider(Provider):
    """Writes each SMS to the log instead of sending it: for trying the service out."""

    name = "console"

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        reference = f"console-{uuid.uuid4().hex[:12]}"
        log.warning("CONSOLE SMS (not sent) from %s to %s, ref %s: %s",
                    sender, self.format_phone(phone), reference, text)
        return SendResult(Outcome.SENT, reference=reference, code="0", message="written to the log")


class OneClickProvider(Provider):
    """OneClick (Serbia): JSON over HTTPS, `status == 0` in the answer means accepted."""

    name = "oneclick"
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
    def from_config(cls, config: Config) -> OneClickProvider:
        http = KeepAliveClient(config.sms_api_url, config.http_timeouts)
        return cls(config.sms_username, config.sms_password, http)

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


PROVIDERS: dict[str, type[Provider]] = {
    ConsoleProvider.name: ConsoleProvider,
    OneClickProvider.name: OneClickProvider,
}


def create_provider(config: Config) -> Provider:
    """The provider named by SMS_PROVIDER, built from the settings."""
    return PROVIDERS[config.sms_provider].from_config(config)
