"""The validated shapes of what the service keeps, a client and a mailing, and the rules for their
fields (phones, tags, time zones, moments, texts). The domain modules (clients.py, mailings.py),
the CSV import and the API's schemas (schemas.py) all use these.

Phone numbers are checked against the region the validation context gives as `region`
(DEFAULT_REGION); texts against the provider's longest text when it gives `max_segments`.
"""
from __future__ import annotations

import functools
from datetime import UTC, datetime, time
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from phones import InvalidPhone, to_e164
from store import MAX_ID
from texts import Template, TemplateError, too_many_parts

MAILING_FIELDS = frozenset({"name", "first_name"})  # what a mailing's text may use, per client
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^;,\s][^;,]*$")]
OperatorCode = Annotated[str, Field(min_length=1, max_length=8, pattern=r"^\d+$")]
Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]  # JSON's integers only: not "12", 12.0 or true
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def whole_number(text: str | None, most: int = MAX_ID) -> int | None:
    """`text` as a whole number from 1 to `most`, else None: ASCII digits only (never '²' or '٣', which
    str.isdigit takes and int refuses or reads), and never more digits than `most` has (int() of
    thousands of digits is refused, and costs)."""
    if not text or not (text.isascii() and text.isdecimal()) or len(text) > len(str(most)):
        return None
    number = int(text)
    return number if 1 <= number <= most else None


def check_moment(value: datetime) -> datetime:
    """Bounded so that every moment the API accepts can be stored and read back (a year past
    9999 in UTC, from an offset, could be written but not read)."""
    if not EARLIEST <= value < LATEST:
        raise ValueError("must be between 2000-01-01 and 2100-01-01 UTC")
    return value


Moment = Annotated[AwareDatetime, AfterValidator(check_moment),
                   Field(description="With a time zone; between 2000-01-01 and 2100-01-01 UTC")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_phone(value: str, info: ValidationInfo) -> str:
    try:
        return to_e164(value, (info.context or {}).get("region", "RS"))
    except InvalidPhone as error:
        raise ValueError(str(error))


@functools.cache
def _iana_time_zones() -> frozenset[str]:
    """The IANA zone names this system knows, found once per process: finding them scans the disk.

    ZoneInfo opens any file of the tz directory, so `localtime` (this machine's zone, whatever it
    is), `Factory` and `posixrules` would pass it; none of them is a zone a client lives in.
    """
    return frozenset(available_timezones() - {"Factory", "localtime", "posixrules"})


def is_iana_time_zone(name: str) -> bool:
    """The one rule for a time zone name, for the API's fields and DEFAULT_TIMEZONE alike."""
    return name in _iana_time_zones()


def check_timezone(value: str | None) -> str | None:
    if value is not None and not is_iana_time_zone(value):
        raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Belgrade")
    return value


class ClientCreate(Strict):
    phone: str = Field(description="Any common form; stored in E.164", examples=["+381641234567"])
    name: str = Field("", max_length=200)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    timezone: str | None = Field(None, description="IANA name; DEFAULT_TIMEZONE when left out")
    operator_code: OperatorCode | None = Field(None, description="Derived from the number when left out")
    moyklass_user_id: Id | None = None

    _phone = field_validator("phone")(check_phone)
    _timezone = field_validator("timezone")(check_timezone)


class MailingFilter(Strict):
    tags: list[Tag] = Field(default_factory=list, description="Any of these tags")
    operator_codes: list[OperatorCode] = Field(default_factory=list, description="Any of these codes")
    all: bool = Field(False, strict=True, description="Every client; required when both lists are empty")

    @model_validator(mode="after")
    def _not_empty(self) -> MailingFilter:
        if self.all and (self.tags or self.operator_codes):
            raise ValueError('"all": true cannot be combined with tags or operator_codes')
        if not (self.all or self.tags or self.operator_codes):
            raise ValueError('an empty filter would reach every client: say {"all": true}')
        return self


class Window(Strict):
    from_: str = Field(alias="from", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["09:00"])
    to: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["21:00"])

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.from_ == self.to:
            raise ValueError("from and to are equal: the window would be empty (or leave it out)")
        return self

    def bounds(self) -> tuple[time, time]:
        return time.fromisoformat(self.from_), time.fromisoformat(self.to)


def check_mailing_text(value: str, info: ValidationInfo) -> str:
    """A template of known placeholders, within the provider's longest text when the validation
    context gives `max_segments`.

    The length depends on each client's name, so the text is measured with its placeholders
    empty: the least it can be. A longer name may still make one client's message too long;
    that message alone fails when it is sent.
    """
    try:
        template = Template(value, MAILING_FIELDS)
    except TemplateError as error:
        raise ValueError(str(error))
    check_parts(template.render(dict.fromkeys(MAILING_FIELDS, "")), info,
                ", counted with {name} and {first_name} empty (the least it can be)")
    return value


def check_parts(text: str, info: ValidationInfo, counted: str = "") -> None:
    """The text fits the provider's longest text, when the validation context gives `max_segments`."""
    max_segments = (info.context or {}).get("max_segments")
    problem = too_many_parts(text, max_segments, counted) if max_segments is not None else None
    if problem:
        raise ValueError(problem)


class MailingCreate(Strict):
    start_at: Moment
    end_at: Moment
    text: str | None = Field(None, min_length=1, max_length=1000,
                             examples=["Zdravo {first_name}, upis počinje sutra."], description="Or `template`")
    template: str | None = Field(None, max_length=64, description="Or the name of an approved template, whose"
                                 " approved version becomes the mailing's text ({name} and {first_name} only)")
    filter: MailingFilter
    window: Window | None = Field(None, description="Local time of each client in which to send; may wrap midnight")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_mailing_text(value, info)

    @model_validator(mode="after")
    def _text_or_template(self) -> MailingCreate:
        if (self.text is None) == (self.template is None):
            raise ValueError("give exactly one of text and template")
        return self

    @model_validator(mode="after")
    def _times(self, info: ValidationInfo) -> MailingCreate:
        """`now` comes from the validation context (a test's clock), else the real clock."""
        if self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        if self.end_at <= (info.context or {}).get("now", datetime.now(UTC)):
            raise ValueError("end_at is in the past")
        return self


# --- batch requests ---

MAX_RECIPIENTS = 5000
Priority = Literal["high", "normal", "low"]  # store.PRIORITIES
VariableName = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,31}$")]  # templates.VARIABLE


class BatchRecipient(Strict):
    """One recipient of a batch request: validated alone, so that an invalid one is rejected alone."""

    phone: str = Field(examples=["+381641234567"])
    variables: dict[VariableName, Annotated[str, Field(max_length=500)]] = Field(
        default_factory=dict, description="A value for each {VARIABLE} of the template")
    send_at: Moment | None = Field(None, description="Not before this moment; now when left out")
    priority: Priority | None = Field(None, description="The request's priority when left out")

    _phone = field_validator("phone")(check_phone)
