"""What the console's pages share: the app's services, the school's time zone, form values, fragments."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, render_template, request
from flask_babel import gettext as _
from pydantic import ValidationError
from werkzeug.exceptions import BadRequest

from clients import field_path
from config import Config
from models import whole_number
from store import MAX_ID, Store

MAX_PAGE = 1_000_000  # of 50 rows: far beyond any list here, and its offset well inside a 64-bit integer
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2100, 12, 31)  # the days a search or filter may name


def services() -> Any:
    return current_app.extensions["sms_bulk_app"]


def store() -> Store:
    return services().store


def config() -> Config:
    return services().config


def validation_context() -> dict[str, Any]:
    """What the models check against, as the API's (api._validation_context): the region of numbers
    without a country code, and the longest text the providers take."""
    return {"region": config().default_region, "max_segments": services().dispatcher.max_segments}


def zone() -> ZoneInfo:
    return ZoneInfo(config().default_timezone)


def local_moment(text: str) -> datetime | str:
    """A datetime-local field (`2026-05-01T09:00`) in the school's time zone; the text back when it is not one."""
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=zone())
    except ValueError:
        return text


def local_input(moment: float) -> str:
    """A moment as a datetime-local field shows it, in the school's time zone."""
    return datetime.fromtimestamp(moment, zone()).strftime("%Y-%m-%dT%H:%M")


class BadParameter(BadRequest):
    """A value of the address or the form the console cannot take: a 400 page naming it (console's handler)."""


def number_parameter(name: str, text: str | None, most: int = MAX_ID, default: int | None = None) -> int | None:
    """The parameter `name` (its `text`, of the address or the form) as a whole number from 1 to `most`;
    `default` when it is empty. BadParameter otherwise."""
    text = (text or "").strip()
    if not text:
        return default
    number = whole_number(text, most)
    if number is None:
        raise BadParameter(_("“%(name)s” must be a whole number from 1 to %(most)d.", name=name, most=most))
    return number


def page_number() -> int:
    """The address's page: 1 when not given."""
    return number_parameter("page", request.args.get("page"), MAX_PAGE, default=1)


def day_parameter(name: str, default: date | None) -> date | None:
    """The address's parameter `name` as a day (2026-05-01) from FIRST_DAY to LAST_DAY; `default` when
    it is empty. BadParameter otherwise: an unreadable day is refused, not replaced."""
    text = request.args.get(name, "").strip()
    if not text:
        return default
    try:
        found = date.fromisoformat(text)
    except ValueError:
        found = None
    if found is None or not FIRST_DAY <= found <= LAST_DAY:
        raise BadParameter(_("“%(name)s” must be a date such as 2026-05-01, from %(first)s to %(last)s.",
                             name=name, first=FIRST_DAY.isoformat(), last=LAST_DAY.isoformat()))
    return found


def words(text: str | None) -> list[str]:
    """A field of items separated by commas (tags, operator codes)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def errors_of(error: ValidationError) -> dict[str, str]:
    """Field by field, as the API reports them (the domain's words, which the console shows as they are)."""
    found: dict[str, str] = {}
    for item in error.errors():
        found.setdefault(field_path(item), item["msg"].removeprefix("Value error, "))
    return found


def wants_fragment() -> bool:
    """The page's script (console.js) asks for the live part of a page only."""
    return request.headers.get("X-Fragment") == "1"


def page_or_fragment(page: str, fragment: str, status: int = 200, **values: Any) -> tuple[str, int]:
    return render_template(fragment if wants_fragment() else page, **values), status
