"""One pydantic schema per request and response of /api/v1: they validate, and they are the
OpenAPI document (api.py builds /openapi.json from them). What the service keeps (a client, a
mailing) is validated by models.py; the schemas here wrap it for the API.
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from events import EVENT_NAME, MOYKLASS_EVENTS
from models import (
    MAX_RECIPIENTS,
    BatchRecipient,
    Id,
    MailingFilter,
    Moment,
    OperatorCode,
    Priority,
    Strict,
    Tag,
    VariableName,
    Window,
    check_mailing_text,
    check_parts,
    check_phone,
    check_timezone,
)
from reports import MAX_DAYS
from store import CANCELED, MAILING_STATES, MAX_ID, QUEUED, STATUSES
from templates import NAME, check_text

TemplateName = Annotated[str, Field(pattern=f"^{NAME.pattern}$", examples=["birthday"])]
TemplateText = Annotated[str, Field(min_length=1, max_length=1000, examples=["Vaš kod je {CODE}, {first_name}."]),
                         AfterValidator(check_text)]

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


class CostEstimate(BaseModel):
    """An estimate, made when the mailing is created: the clients its filter matches then (more or
    fewer may match when it starts), each message's parts counted with {name} and {first_name} empty
    (a long name may add one), each at the price per part of the first provider of its route (a
    failover may send it through another)."""

    recipients: int = Field(description="Clients the filter matches now")
    parts_per_message: int = Field(description="SMS parts of the text with its placeholders empty")
    parts: int = Field(description="recipients x parts_per_message")
    cost: dict[str, float] = Field(description="By currency; providers without a price are left out")


class MailingCreated(Mailing):
    estimate: CostEstimate


class MailingList(BaseModel):
    items: list[Mailing]


StatusName = Literal[STATUSES]


class ProviderCost(BaseModel):
    provider: str
    messages: int = Field(description="Messages sent through it (SENT, and those with a delivery report since)")
    parts: int = Field(description="Their SMS parts")
    cost: float = Field(description="<PROVIDER>_PRICE_PER_PART x parts; 0 without a price")
    currency: str | None


class MailingStats(BaseModel):
    id: int
    state: MailingState
    total: int
    counts: dict[str, int] = Field(description="Messages by status")
    progress: float = Field(description="Share of messages no longer waiting, 0 to 1")
    segments: int = Field(description="SMS parts sent")
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    cost: dict[str, float] = Field(description="What its sent messages cost, by currency (priced providers only)")
    by_provider: list[ProviderCost] = Field(description="Its sent messages through each provider")


class MailingStatsList(BaseModel):
    items: list[MailingStats]


# --- messages ---

class MessageCreate(Strict):
    phone: str | None = Field(None, description="Send to this number")
    moyklass_user_id: Id | None = Field(None, description="Or to this MoyKlass user's phone")
    text: str | None = Field(None, min_length=1, max_length=1000,
                             description="With phone, or template; with a user, the event's text when left out")
    event: str | None = Field(None, description="With a user: whose SMS_TEXT_<EVENT> to use")
    template: TemplateName | None = Field(None, description="With phone, instead of text: an approved template")
    variables: dict[VariableName, Annotated[str, Field(max_length=500)]] = Field(
        default_factory=dict, description="With template: a value for each of its {VARIABLE}s")

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
        if self.phone is not None and (self.text is None) == (self.template is None):
            raise ValueError("text is required with phone" if self.text is None else "give text or template, not both")
        if self.template is None and self.variables:
            raise ValueError("variables go with template")
        if self.template is not None and self.moyklass_user_id is not None:
            raise ValueError("template goes with phone: a user's text is its event's")
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
    provider: str | None = Field(description="The provider that sent it, or tried last")
    gateway_ref: str | None
    cost: float | None = Field(description="Its parts x its provider's price per part, once sent")
    currency: str | None
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


# --- templates ---



class TemplateCreate(Strict):
    name: TemplateName
    text: TemplateText = Field(description="{VARIABLE}: a request's variable; {name}, {first_name}...: the"
                                           " service's fields, filled by mailings and events")


class TemplateUpdate(Strict):
    text: TemplateText


class ApproveQuery(Strict):
    version: int | None = Field(None, ge=1, le=MAX_ID, description="Approve only if this is still the latest version")


class TemplateSample(BaseModel):
    """The latest version with each placeholder written as its own name: longer values, or letters
    GSM-7 lacks, make more parts."""

    text: str
    encoding: Literal["GSM-7", "UCS-2"]
    parts: int


class SmsTemplate(BaseModel):
    id: int
    name: str
    version: int = Field(description="The latest version")
    text: str = Field(description="The latest version's text")
    status: Literal["approved", "draft"] = Field(description="Of the latest version")
    approved_version: int | None = Field(description="The version mailings, requests and events use; null: none yet")
    approved_text: str | None
    variables: list[str] = Field(description="The latest version's request variables")
    sample: TemplateSample
    created_at: datetime
    updated_at: datetime


class SmsTemplateList(BaseModel):
    items: list[SmsTemplate]


class TemplateVersionInfo(BaseModel):
    version: int
    text: str
    status: Literal["approved", "draft"]
    created_at: datetime
    created_by: str = Field(description="The API key's name, or cli")
    approved_at: datetime | None
    approved_by: str | None


class TemplateVersionList(BaseModel):
    items: list[TemplateVersionInfo]


# --- batch requests ---

class BatchRequestCreate(Strict):
    template: TemplateName
    priority: Priority = Field("normal", description="Of every recipient that gives none; high is claimed first")
    # Each recipient is checked on its own (batch_requests.py), so that an invalid one is rejected alone.
    recipients: Annotated[list[Any], Field(min_length=1, max_length=MAX_RECIPIENTS),
                          WithJsonSchema({"type": "array", "minItems": 1, "maxItems": MAX_RECIPIENTS,
                                          "items": BatchRecipient.model_json_schema()})]


class RejectedRecipient(BaseModel):
    index: int = Field(description="Its place in `recipients`, from 0")
    reason: str


class QueuedRecipient(BaseModel):
    index: int
    id: int = Field(description="The message")
    status: Literal[QUEUED, CANCELED] = Field(description="CANCELED: a duplicate (DEDUP_SECONDS)")


class BatchRequestCreated(BaseModel):
    id: int
    template: str
    template_version: int
    queued: int
    duplicates: int = Field(description="Recorded CANCELED: the same text went to the phone within DEDUP_SECONDS")
    rejected: list[RejectedRecipient]
    messages: list[QueuedRecipient]


class BatchRequestRejected(Error):
    rejected: list[RejectedRecipient]


class BatchRequestInfo(BaseModel):
    id: int
    template_id: int
    template_version: int
    created_at: datetime
    recipients: int = Field(description="In the request, rejected ones too")
    rejected: list[RejectedRecipient]
    total: int = Field(description="Messages recorded")
    counts: dict[str, int] = Field(description="Its messages by status, those it has")


# --- reports ---

def _days_in_order(query: Any) -> Any:
    first, last = getattr(query, "from"), query.to
    if last < first:
        raise ValueError("to is before from")
    if (last - first).days >= MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days at a time")
    return query


# `from` is a Python keyword: the model is made with it as a field name, read with getattr(query, "from").
ReportQuery = create_model(
    "ReportQuery", __base__=Strict, __validators__={"_days": model_validator(mode="after")(_days_in_order)},
    **{"from": (date, Field(description="The first day, in DEFAULT_TIMEZONE")),
       "to": (date, Field(description="The last day, included"))})


class ReportLine(BaseModel):
    day: date = Field(description="In DEFAULT_TIMEZONE, the day the messages were queued")
    provider: str | None = Field(description="null: not sent (yet)")
    total: int
    sent: int = Field(description="Taken by the gateway (SENT, and later DELIVERED, UNDELIVERED, ...)")
    delivered: int
    failed: int = Field(description="FAILED or UNDELIVERED")
    parts: int = Field(description="SMS parts of those sent")
    cost: float = Field(description="What those sent cost (0 where the provider has no price)")


class ReportSummary(BaseModel):
    timezone: str
    items: list[ReportLine]
