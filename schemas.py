"""One pydantic schema per request and response of /api/v1: they validate, and they are the
OpenAPI document (api.py builds /openapi.json from them). What the service keeps (a client, a
mailing) is validated by models.py; the schemas here wrap it for the API.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from events import EVENT_NAME, MOYKLASS_EVENTS
from models import (
    Id,
    MailingFilter,
    Moment,
    OperatorCode,
    Strict,
    Tag,
    Window,
    check_mailing_text,
    check_parts,
    check_phone,
    check_timezone,
)
from store import MAILING_STATES, MAX_ID, STATUSES

# --- errors ---

class Error(BaseModel):
    status: Literal["error"] = "error"
    message: str
    errors: dict[str, str] | None = Field(None, description="What is wrong with each field")
    id: int | None = None


# --- clients ---

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

