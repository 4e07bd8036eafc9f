"""What the console's pages share: the app's services, the school's time zone, form values, fragments."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, render_template, request
from pydantic import ValidationError

from clients import field_path
from config import Config
from store import Store


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


def day(text: str | None, default: date) -> date:
    try:
        return date.fromisoformat(text) if text else default
    except ValueError:
        return default


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
