"""MoyKlass' webhook events: which exist, which SMSBulkApp sends for, and what each one's object carries."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from store import MAX_ID

# Every event MoyKlass can send (its CRM's webhook settings); SMS_TEXT_<EVENT> must name one of them.
MOYKLASS_EVENTS = frozenset(
    """
    user_new user_changed user_changed_state user_birthday
    join_new join_changed join_changed_state join_deleted
    payment_new debit_new
    sub_new sub_lessons_left sub_lesson_in_debt sub_days_next_payment sub_end_days
    lesson_new lesson_changed lesson_deleted lesson_start_days lesson_start_hours
    lesson_record_new lesson_record_changed lesson_record_deleted
    class_new class_changed class_deleted task_new task_changed task_deleted
    lesson_mark_new lesson_mark_changed lesson_mark_deleted
    user_consecutive_visit_missed_2 lesson_start
    """.split()
)  # lesson_start: some accounts send it instead of lesson_start_hours

# What any event name given to the service may be (MoyKlass' are snake_case): bounded, printable,
# so that an unknown one can be answered, counted and logged as it is.
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class MalformedObject(ValueError):
    """A known event whose object lacks a field it must carry, or carries it in the wrong form."""


@dataclass(frozen=True)
class ObjectField:
    """A field the event's object must carry, and the template placeholder it fills, if any."""

    name: str
    kind: str  # "id": a positive integer; "number": an amount; "date": YYYY-MM-DD
    placeholder: str | None = None

    def read(self, obj: dict[str, Any]) -> Any:
        value = obj.get(self.name)
        if value is None:
            raise MalformedObject(f"object.{self.name} is missing")
        if self.kind == "id" and not (type(value) is int and 1 <= value <= MAX_ID):
            raise MalformedObject(f"object.{self.name} must be a positive integer up to {MAX_ID}")
        if self.kind == "number":
            # Also refuses NaN and infinity, and an int of 400 digits before anything makes it a float.
            if not (type(value) in (int, float) and abs(value) < MAX_AMOUNT):
                raise MalformedObject(f"object.{self.name} must be a number less than {MAX_AMOUNT:,} in size")
            return f"{value:.2f}".removesuffix(".00")  # an amount as people write it: 6000, 2400.50
        if self.kind == "date":
            try:
                if not (isinstance(value, str) and DATE.fullmatch(value)):
                    raise ValueError
                date.fromisoformat(value)
            except ValueError:
                raise MalformedObject(f"object.{self.name} must be a date such as 2026-11-23")
        return value


@dataclass(frozen=True)
class EventFamily:
    """Events whose objects have the same shape: what they must carry, and what their texts may use."""

    name: str
    events: frozenset[str]
    fields: tuple[ObjectField, ...]
    reads_lesson: bool = False  # a reminder: its students are the lesson's records, read from MoyKlass

    @property
    def placeholders(self) -> frozenset[str]:
        given = frozenset(f.placeholder for f in self.fields if f.placeholder)
        return given | LESSON_PLACEHOLDERS if self.reads_lesson else given

    def read(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object's fields by name, checked (MalformedObject names the first one wrong)."""
        return {f.name: f.read(obj) for f in self.fields}


DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_AMOUNT = 10**12  # payments: larger is no amount of money but a malformed object
STUDENT = ObjectField("userId", "id")
LESSON_PLACEHOLDERS = frozenset({"lesson_date", "lesson_time", "topic"})  # from the lesson MoyKlass gives

# The events SMSBulkApp sends for, one entry per family (MoyKlass' webhook objects differ by event).
# An event of MOYKLASS_EVENTS in no family names no student in its object: nothing can be sent for it.
FAMILIES = (
    EventFamily("user", frozenset({"user_new", "user_changed", "user_changed_state", "user_birthday"}), (STUDENT,)),
    EventFamily("join", frozenset({"join_new", "join_changed", "join_changed_state", "join_deleted"}), (STUDENT,)),
    EventFamily("payment", frozenset({"payment_new", "debit_new"}),
                (STUDENT, ObjectField("summa", "number", "summa"), ObjectField("date", "date", "date"))),
    EventFamily("subscription", frozenset({"sub_new", "sub_lessons_left", "sub_lesson_in_debt",
                                           "sub_days_next_payment", "sub_end_days"}), (STUDENT,)),
    EventFamily("lesson_record", frozenset({"lesson_record_new", "lesson_record_changed", "lesson_record_deleted"}),
                (STUDENT, ObjectField("lessonId", "id"))),
    # lesson_new and lesson_changed only send when the school gives them a text (SMS_TEXT_LESSON_NEW, ...).
    EventFamily("lesson reminder", frozenset({"lesson_start_hours", "lesson_start_days", "lesson_start",
                                              "lesson_new", "lesson_changed"}),
                (ObjectField("lessonId", "id"),), reads_lesson=True),
)
# A body with no event at all is the original service's contract: a student, the default text.
NO_EVENT = EventFamily("no event", frozenset(), (STUDENT,))
FAMILY_OF = {event: family for family in FAMILIES for event in family.events}


def family_of(event: str | None) -> EventFamily | None:
    """The family of `event` (NO_EVENT for None); None: SMSBulkApp cannot send for it."""
    return NO_EVENT if event is None else FAMILY_OF.get(event)
