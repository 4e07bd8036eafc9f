"""What every provider is: its settings, its verdicts, its delivery reports.

A provider declares what it is (name, settings, phone format, longest text, delivery reports)
and its `send()` returns a SendResult carrying the gateway's own verdict, never just "HTTP 200".
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


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


@dataclass(frozen=True)
class Setting:
    """One setting of a provider, read from the environment as `<PROVIDER>_<name>` (ONECLICK_USERNAME).

    `kind` is how it is checked: text, url (http or https), integer or number (at least 0).
    `legacy` is an older name still read when the new one is not set (SMS_USERNAME for OneClick).
    """

    name: str
    required: bool = False
    secret: bool = False
    default: str | None = None
    kind: str = "text"
    legacy: str | None = None
    help: str = ""


# Settings every provider has besides its own, read as `<PROVIDER>_<name>` like them (SMSAERO_RATE_PER_SEC).
# Unset, RATE_PER_SEC and CONCURRENCY are SMS_RATE_PER_SEC and SMS_CONCURRENCY (config fills them in).
COMMON_SETTINGS = (
    Setting("RATE_PER_SEC", kind="number", help="sends per second through it, all processes together; 0: no limit"),
    Setting("CONCURRENCY", kind="integer", help="its sends in flight at once, all processes together (1-256)"),
    Setting("PRICE_PER_PART", kind="number", default="0", help="what one SMS part costs, e.g. 2.1"),
    Setting("CURRENCY", default="", help="the price's currency, e.g. RSD"),
)


# Where a provider hands a delivery report that arrives on its own (an SMPP deliver_sm): its name,
# the gateway's reference of the message, the report. The report is kept until the message is
# found, so one that comes before the send's result is written is not lost.
ReportSink = Callable[[str, str, "DeliveryReport"], None]


@dataclass(frozen=True)
class Shared:
    """What every provider of the process is built with, besides its own settings."""

    http_timeouts: tuple[float, float]  # (connect, the whole request)
    public_url: str | None = None  # the service's own URL, for gateways that call back (PUBLIC_URL)
    report_sink: ReportSink | None = None


class Provider:
    name: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]] = ()
    max_segments: ClassVar[int] = 6  # longest text (in SMS parts) the gateway takes
    supports_delivery_reports: ClassVar[bool] = False  # the worker asks `delivery_report()` for them
    pushes_delivery_reports: ClassVar[bool] = False  # they come on their own (callbacks, deliver_sm)
    # Its messages are not sent by the worker but fetched by its gateways (phones: providers/android.py):
    # the Dispatcher hands them to its pool instead of calling `send()`.
    pulls: ClassVar[bool] = False

    @classmethod
    def env_name(cls, setting: Setting) -> str:
        """The environment variable of one of its settings: `<PROVIDER>_<SETTING>`."""
        return f"{cls.name.upper()}_{setting.name}"

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> list[str]:
        """What is wrong with its settings taken together (one of two required), which no single
        Setting can say; each problem names the variables without their values."""
        return []

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], shared: Shared) -> Provider:
        """Built from its settings (checked and typed by config, by `Setting.name`)."""
        return cls()

    def format_phone(self, phone: str) -> str:
        """The gateway's form of an E.164 number; E.164 itself unless a provider says otherwise."""
        return phone

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        raise NotImplementedError

    def delivery_report(self, reference: str) -> DeliveryReport:
        """Only for providers that declare `supports_delivery_reports`."""
        raise NotImplementedError
