"""MoyKlass' webhook events: which exist, and what an event name may look like."""
from __future__ import annotations

import re

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
    user_consecutive_visit_missed_2
    """.split()
)

# What any event name given to the service may be (MoyKlass' are snake_case): bounded, printable,
# so that an unknown one can be answered, counted and logged as it is.
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
