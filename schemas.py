"""One pydantic schema per request and response of /api/v1: they validate, and they are the
OpenAPI document (api.py builds /openapi.json from them).

Phone numbers are checked against DEFAULT_REGION, which the API passes in the validation
context as `region`; time zones against the IANA database.
"""
from __future__ import annotations

import functools
import json
import math
from datetime import UTC, datetime, time
from typing import Annotated, Any, Literal, NoReturn
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

from events import EVENT_NAME, MOYKLASS_EVENTS
from phones import InvalidPhone, to_e164
from store import MAILING_STATES, MAX_ID, STATUSES
from texts import Template, TemplateError, measure

MAILING_FIELDS = frozenset({"name", "first_name"})  # what a mailing's text may use, per client
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^;,\s][^;,]*$")]
OperatorCode = Annotated[str, Field(min_length=1, max_length=8, pattern=r"^\d+$")]
Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]  # JSON's integers only: not "12", 12.0 or true
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
MAX_JSON_DEPTH = 32  # MoyKlass envelopes nest 4 deep, API bodies 3


class InvalidJson(ValueError):
    """A request body that is not JSON the service can keep."""


def _refuse_constant(name: str) -> NoReturn:
    """json.loads' parse_constant: `NaN`, `Infinity` and `-Infinity` are JavaScript, not JSON."""
    raise InvalidJson(f"the body holds {name}: JSON has no such number")


def parse_json(body: bytes) -> Any:
    """A request body (webhook or API) as JSON, refused unless every part of it can be kept.

    json.loads accepts what SQLite and the rest of the service cannot: lone surrogates
    (`"\\ud800"`, which UTF-8 cannot encode), nesting as deep as the recursion limit (a
    RecursionError there, or later in json.dumps), and numbers JSON does not have: `NaN`,
    `Infinity`, `-Infinity`, and those too large for a float (`1e999`, read as infinity). All are
    refused here, before anything is written.
    """
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    except ValueError:  # UnicodeDecodeError (bytes that are not UTF-8) included
        raise InvalidJson("the body is not valid JSON")
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, level = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidJson("the body holds a lone surrogate (such as \\ud800): it is not valid Unicode text")
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidJson("the body holds a number too large to keep (such as 1e999)")
        elif isinstance(value, (dict, list)):
            if level > MAX_JSON_DEPTH:
                raise InvalidJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
            children = [*value, *value.values()] if isinstance(value, dict) else value
            pending.extend((child, level + 1) for child in children)
    return data


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


# --- errors ---

class Error(BaseModel):
    status: Literal["error"] = "error"
    message: str
    errors: dict[str, str] | None = Field(None, description="What is wrong with each field")
    id: int | None = None


# --- clients ---

class ClientCreate(Strict):
    phone: str = Field(description="Any common form; stored in E.164", examples=["+381641234567"])
    name: str = Field("", max_length=200)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    timezone: str | None = Field(None, description="IANA name; DEFAULT_TIMEZONE when left out")
    operator_code: OperatorCode | None = Field(None, description="Derived from the number when left out")
    moyklass_user_id: Id | None = None

    _phone = field_validator("phone")(check_phone)
    _timezone = field_validator("timezone")(check_timezone)


class ClientUpdate(Strict):
    """Only the fields given change; `moyklass_user_id: null` unlinks the MoyKlass user."""

    # Defaults of None that are not valid values: leaving a field out is fine, sending null is not.
    phone: str = None
    name: str = Field(None, max_length=200)
    tags: list[Tag] = Field(None, max_length=50)
    timezone: str = None
    operator_code: OperatorCode = None
    moyklass_user_id: Id | None = None

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_phone(value, info)

    _timezone = field_validator("timezone")(check_timezone)


class Client(BaseModel):
    id: int
    phone: str
    operator_code: str
    tags: list[str]
    timezone: str
    name: str
    moyklass_user_id: int | None
    created_at: datetime


class ClientQuery(Strict):
    tag: str | None = None
    operator_code: str | None = None
    phone: str | None = Field(None, description="A whole number in any form, or digits anywhere in it")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=MAX_ID)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        """Empty is no filter, like an empty tag; a filter without a digit would match every client."""
        if value and not any(char in "0123456789" for char in value):
            raise ValueError("give a whole number or some of its digits: this has no digit 0-9")
        return value


class Paging(BaseModel):
    total: int = Field(description="Items matching, on all pages")
    limit: int
    offset: int


class ClientPage(Paging):
    items: list[Client]


class RejectedRow(BaseModel):
    row: int = Field(description="Line number in the file, the header being line 1")
    reason: str


class ImportReport(BaseModel):
    created: int
    updated: int
    rejected: list[RejectedRow]
    ignored_columns: list[str] = Field(description="Header columns that are not client fields")
    encoding: Literal["utf-8", "utf-8-sig", "cp1250", "cp1251"] = Field(
        description="How the file was read: UTF-8, UTF-8 with a BOM, Windows Latin 2 or Cyrillic")
    delimiter: Literal[",", ";", "\t"] = Field(description="Taken from the header line")


# --- mailings ---

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


def too_many_parts(text: str, max_segments: int, counted: str = "") -> str | None:
    """Why `text` cannot be sent by a provider taking at most `max_segments` parts; None if it can."""
    parts = measure(text).segments
    if parts <= max_segments:
        return None
    return f"the text needs {parts} SMS parts{counted}; the SMS provider takes at most {max_segments}"


class MailingCreate(Strict):
    start_at: Moment
    end_at: Moment
    text: str = Field(min_length=1, max_length=1000, examples=["Zdravo {first_name}, upis počinje sutra."])
    filter: MailingFilter
    window: Window | None = Field(None, description="Local time of each client in which to send; may wrap midnight")

    _text = field_validator("text")(check_mailing_text)

    @model_validator(mode="after")
    def _times(self, info: ValidationInfo) -> MailingCreate:
        """`now` comes from the validation context (a test's clock), else the real clock."""
        if self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        if self.end_at <= (info.context or {}).get("now", datetime.now(UTC)):
            raise ValueError("end_at is in the past")
        return self


class MailingUpdate(Strict):
    """Only the fields given change; `window: null` removes the window."""

    start_at: Moment = None
    end_at: Moment = None
    text: str = Field(None, min_length=1, max_length=1000)
    filter: MailingFilter = None
    window: Window | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_mailing_text(value, info)


MailingState = Literal[MAILING_STATES]


class Mailing(BaseModel):
    """`finished`: started, and no message is left QUEUED or SENDING (at once when no client matched)."""

    id: int
    start_at: datetime
    end_at: datetime
    text: str
    filter: dict
    window: dict | None
    state: MailingState
    created_at: datetime
    started_at: datetime | None


class MailingList(BaseModel):
    items: list[Mailing]


StatusName = Literal[STATUSES]


class MailingStats(BaseModel):
    id: int
    state: MailingState
    total: int
    counts: dict[str, int] = Field(description="Messages by status")
    progress: float = Field(description="Share of messages no longer waiting, 0 to 1")
    segments: int = Field(description="SMS parts sent")
    first_sent_at: datetime | None
    last_sent_at: datetime | None


class MailingStatsList(BaseModel):
    items: list[MailingStats]


# --- messages ---

class MessageCreate(Strict):
    phone: str | None = Field(None, description="Send to this number")
    moyklass_user_id: Id | None = Field(None, description="Or to this MoyKlass user's phone")
    text: str | None = Field(None, min_length=1, max_length=1000,
                             description="Required with phone; with a user, the event's text when left out")
    event: str | None = Field(None, description="With a user: whose SMS_TEXT_<EVENT> to use")

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_phone(value, info)

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_parts(value, info)
        return value

    @field_validator("event")
    @classmethod
    def _event(cls, value: str | None) -> str | None:
        if value is not None and not EVENT_NAME.fullmatch(value):
            raise ValueError("not an event name (1-64 of A-Z a-z 0-9 _ . : -)")
        if value is not None and value not in MOYKLASS_EVENTS:
            raise ValueError(f"MoyKlass has no event {value!r}")
        return value

    @model_validator(mode="after")
    def _target(self) -> MessageCreate:
        if (self.phone is None) == (self.moyklass_user_id is None):
            raise ValueError("give exactly one of phone and moyklass_user_id")
        if self.phone is not None and self.text is None:
            raise ValueError("text is required with phone")
        if self.phone is not None and self.event is not None:
            raise ValueError("event goes with moyklass_user_id, not with phone")
        return self


class Message(BaseModel):
    id: int
    status: StatusName
    phone: str | None
    text: str | None
    encoding: str | None
    segments: int | None
    attempts: int
    mailing_id: int | None
    client_id: int | None
    user_id: int | None
    gateway_ref: str | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


class MessageQuery(Strict):
    status: StatusName | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_ID)


class MessagePage(Paging):
    items: list[Message]


class Queued(BaseModel):
    status: Literal["queued"] = "queued"
    id: int

