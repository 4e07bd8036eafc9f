"""Lesson reminders: the lesson's students from MoyKlass, one SMS each, once; parents as recipients."""
from __future__ import annotations

import time
from collections import Counter
from datetime import date, timedelta

import pytest

from config import ConfigError, load_config
from sms_bulk_app import create_app
from store import CANCELED, FAILED, SENT, Store
from tests.conftest import load_fixture, run_command, running_worker, settings_store, wait_until
from tests.fakes import numbered_phone

TOMORROW = (date.today() + timedelta(days=1)).isoformat()
LESSON = 610882
REMINDER_TEXT = "{first_name}, čas „{topic}” počinje {lesson_date} u {lesson_time}."


def book(moyklass, students: dict[int, str], **marks: dict) -> None:
    """A lesson tomorrow at 17:00 with these students (id: name); `marks` per id, e.g. goodReason."""
    for user_id, name in students.items():
        moyklass.add_user(user_id, numbered_phone(user_id), name=name)
    moyklass.add_lesson(LESSON, TOMORROW, "17:00", "Robotika: senzori",
                        records=[{"userId": user_id, **marks.get(str(user_id), {})} for user_id in students])


@pytest.mark.parametrize("event", ["lesson_start_hours", "lesson_start_days", "lesson_start", "lesson_new",
                                   "lesson_changed"])
def test_a_lesson_reminder_reaches_every_student_booked_once(event, worker_settings, moyklass, oneclick):
    worker_settings.update({f"SMS_TEXT_{event.upper()}": REMINDER_TEXT, "SMS_DLR_MAX_SECONDS": "0"})
    book(moyklass, {2001: "Ana Ilić", 2002: "Marko Jović", 2003: "Jelena Perić"}, **{"2003": {"goodReason": True}})
    client = create_app(worker_settings).test_client()

    answer = client.post("/webhook", json=load_fixture(event))
    assert (answer.status_code, answer.get_json()) == (202, {"status": "queued", "reminder": 1})
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 2, what="2 SENT")
    assert sorted((m["phone"], m["message"]) for m in oneclick.messages) == [
        (numbered_phone(2001), f"Ana, čas „Robotika: senzori” počinje {TOMORROW} u 17:00."),
        (numbered_phone(2002), f"Marko, čas „Robotika: senzori” počinje {TOMORROW} u 17:00."),
    ]  # 2003 is marked absent with a good reason
    assert store.lesson_reminder(1)["state"] == "done" and store.lesson_reminder(1)["messages"] == 2


def test_a_repeated_or_overlapping_reminder_sends_nothing_twice(worker_settings, moyklass, oneclick):
    worker_settings.update(SMS_TEXT_LESSON_START_HOURS=REMINDER_TEXT, SMS_DLR_MAX_SECONDS="0", DEDUP_SECONDS="0")
    book(moyklass, {2001: "Ana Ilić", 2002: "Marko Jović"})
    client = create_app(worker_settings).test_client()
    store = settings_store(worker_settings)
    payload = load_fixture("lesson_start_hours")
    with running_worker(worker_settings):
        assert client.post("/webhook", json=payload).status_code == 202
        wait_until(lambda: store.counts()[SENT] == 2, what="2 SENT")
        moyklass.add_user(2004, numbered_phone(2004), name="Nina Kostić")  # booked since the first reminder
        moyklass.lessons[LESSON]["records"].append({"userId": 2004, "goodReason": False})
        for _ in range(2):  # DEDUP_SECONDS=0: each is a new reminder of the same lesson
            assert client.post("/webhook", json=payload).status_code == 202
        wait_until(lambda: all(store.lesson_reminder(i)["state"] == "done" for i in (1, 2, 3)), what="done")
        wait_until(lambda: store.counts()[SENT] == 3, what="3 SENT")
    assert Counter(m["phone"] for m in oneclick.messages) == Counter(
        {numbered_phone(2001): 1, numbered_phone(2002): 1, numbered_phone(2004): 1})


def test_the_students_of_a_big_lesson_are_looked_up_100_at_a_time(worker_settings, moyklass, oneclick):
    worker_settings.update(SMS_TEXT_LESSON_START_HOURS="{first_name}: čas u {lesson_time}", SMS_DLR_MAX_SECONDS="0",
                           USER_CACHE_SECONDS="0")
    moyklass.numbered_users = 3000
    moyklass.add_lesson(LESSON, TOMORROW, "17:00", "Predavanje", records=[{"userId": 2000 + i} for i in range(250)])
    client = create_app(worker_settings).test_client()
    assert client.post("/webhook", json=load_fixture("lesson_start_hours")).status_code == 202
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 250, timeout=30, what="250 SENT")
    asked = [r for r in moyklass.received if r["path"].startswith("/v1/company/")
             and not r["path"].endswith("getToken")]
    assert [r["path"] for r in asked] == [f"/v1/company/lessons/{LESSON}"] + ["/v1/company/users"] * 3
    assert len({m["phone"] for m in oneclick.messages}) == 250


def test_a_reminder_for_a_lesson_moyklass_does_not_have_fails_and_sends_nothing(worker_settings, moyklass, oneclick):
    worker_settings.update(SMS_TEXT_LESSON_START_HOURS=REMINDER_TEXT)
    client = create_app(worker_settings).test_client()
    assert client.post("/webhook", json=load_fixture("lesson_start_hours")).status_code == 202
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.lesson_reminder(1)["state"] == "failed", what="failed")
    assert store.lesson_reminder(1)["last_error"] == f"MoyKlass has no lesson {LESSON}"
    assert oneclick.messages == [] and sum(store.counts().values()) == 0


def test_a_reminder_without_a_lesson_id_is_a_400_naming_the_field(settings):
    settings["SMS_TEXT_LESSON_START_HOURS"] = REMINDER_TEXT
    answer = create_app(settings).test_client().post(
        "/webhook", json={"event": "lesson_start_hours", "object": {"classId": 3302, "date": TOMORROW}})
    assert (answer.status_code, answer.get_json()["message"]) == (
        400, "object.lessonId is missing (in a lesson_start_hours webhook)")


def parents(moyklass, **numbers: str | None) -> None:
    """Give students a parent's phone in the attribute `parentPhone` (None: no such attribute)."""
    for user_id, number in numbers.items():
        attributes = [] if number is None else [{"attributeAlias": "parentPhone", "attributeName": "Telefon roditelja",
                                                 "attributeType": "phone", "value": number}]
        moyklass.users[int(user_id.removeprefix("u"))]["attributes"] = attributes


def test_both_student_and_parent_are_texted_and_one_number_gets_one_sms(worker_settings, moyklass, oneclick):
    worker_settings.update(SMS_TEXT_LESSON_START_HOURS=REMINDER_TEXT, SMS_DLR_MAX_SECONDS="0",
                           SMS_RECIPIENTS="both", SMS_PARENT_PHONE_ATTRIBUTE="parentPhone")
    book(moyklass, {2001: "Ana Ilić", 2002: "Marko Jović", 2003: "Jelena Perić"})
    parents(moyklass, u2001="0657770001", u2002=numbered_phone(2002), u2003=None)
    client = create_app(worker_settings).test_client()
    assert client.post("/webhook", json=load_fixture("lesson_start_hours")).status_code == 202
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 4 and store.counts()[FAILED] == 1, what="4 SENT, 1 FAILED")
    assert sorted(m["phone"] for m in oneclick.messages) == sorted(
        [numbered_phone(2001), "381657770001", numbered_phone(2002), numbered_phone(2003)])
    rows = store.connection().execute("SELECT user_id, recipient, status, last_error FROM messages ORDER BY id")
    assert [tuple(row) for row in rows if row["status"] == FAILED] == [
        (2003, "parent", FAILED, "MoyKlass user 2003 has no parent phone (attribute parentPhone)")]


def test_a_student_webhook_with_parents_as_recipients(settings, moyklass, oneclick):
    settings.update(SMS_RECIPIENTS="both", SMS_PARENT_PHONE_ATTRIBUTE="parentPhone")
    moyklass.add_user(1001, "381641000001", name="Ana Ilić")
    parents(moyklass, u1001="0657770001")
    app = create_app(settings)
    answer = app.test_client().post("/webhook", json=load_fixture("sub_lessons_left"))
    assert answer.get_json() == {"status": "success", "id": 1, "also_queued": [2]}  # the worker sends the parent's
    store = app.extensions["sms_bulk_app"].store
    messages = [store.message(1), store.message(2)]
    assert [(m["recipient"], m["status"]) for m in messages] == [("student", SENT), ("parent", "QUEUED")]
    assert oneclick.messages[0]["phone"] == "381641000001"


def test_a_parent_with_the_students_number_gets_no_second_sms(worker_settings, moyklass, oneclick):
    worker_settings.update(SMS_RECIPIENTS="both", SMS_PARENT_PHONE_ATTRIBUTE="parentPhone", WEBHOOK_MODE="async")
    moyklass.add_user(1001, "381641000001", name="Ana Ilić")
    parents(moyklass, u1001="064 100 0001")
    client = create_app(worker_settings).test_client()
    assert client.post("/webhook", json=load_fixture("sub_lessons_left")).get_json() == \
        {"status": "queued", "id": 1, "also_queued": [2]}
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        wait_until(lambda: store.message(2)["status"] == CANCELED and store.message(1)["status"] != "QUEUED",
                   what="the parent's message cancelled")
    assert store.message(2)["last_error"] == "the parent's number is the student's: the student's SMS reaches it"
    assert len(oneclick.messages) == 1


def test_parents_as_recipients_need_the_attribute_setting():
    with pytest.raises(ConfigError) as caught:
        load_config({"SMS_RECIPIENTS": "parent"})
    assert caught.value.problems == ["SMS_RECIPIENTS=parent needs SMS_PARENT_PHONE_ATTRIBUTE: the alias of the"
                                     " students' attribute that holds a parent's phone"]


def remind(worker_settings, moyklass, event: str = "lesson_start_hours") -> Store:
    """Post one reminder of LESSON and let a worker expand it; its store."""
    client = create_app(worker_settings).test_client()
    assert client.post("/webhook", json=load_fixture(event)).status_code == 202
    return settings_store(worker_settings)


@pytest.mark.parametrize("lesson, error", [
    ({"records": 5}, "MoyKlass' lesson has no list of records"),
    ({"beginTime": None}, f"MoyKlass' lesson has no readable date and time ('{TOMORROW}', None)"),
    ({"date": "24.11.2026"}, "MoyKlass' lesson has no readable date and time ('24.11.2026', '17:00')"),
    ({"date": "2020-01-01"}, f"lesson {LESSON} started at 2020-01-01 17:00: too late to remind anyone"),
])
def test_a_lesson_a_reminder_cannot_use_fails_it_once_and_sends_nothing(lesson, error, worker_settings, moyklass,
                                                                         oneclick):
    """Before, a malformed lesson left the reminder pending forever, re-read every lease."""
    worker_settings.update(SMS_TEXT_LESSON_START_HOURS=REMINDER_TEXT)
    book(moyklass, {2001: "Ana Ilić"})
    moyklass.lessons[LESSON].update(lesson)
    store = remind(worker_settings, moyklass)
    with running_worker(worker_settings):
        wait_until(lambda: store.lesson_reminder(1)["state"] == "failed", what="failed")
    assert store.lesson_reminder(1)["last_error"] == error
    assert oneclick.messages == [] and sum(store.counts().values()) == 0
    assert "lesson reminders: 0 pending, 0 done, 1 failed" in run_command(worker_settings, "status").stdout


def test_records_without_a_usable_student_id_are_left_out_and_the_others_reminded(worker_settings, moyklass,
                                                                                    oneclick):
    worker_settings.update(SMS_TEXT_LESSON_START_HOURS=REMINDER_TEXT, SMS_DLR_MAX_SECONDS="0")
    book(moyklass, {2001: "Ana Ilić"})
    moyklass.lessons[LESSON]["records"] += [{"userId": 2**64}, {"userId": "2002"}, "x", {"userId": 2001}]
    store = remind(worker_settings, moyklass)
    with running_worker(worker_settings):
        wait_until(lambda: store.counts()[SENT] == 1 and store.lesson_reminder(1)["state"] == "done", what="done")
    assert [m["phone"] for m in oneclick.messages] == [numbered_phone(2001)]


def test_a_lesson_moved_again_the_same_day_is_announced_again(worker_settings, moyklass, oneclick):
    """The key holds the lesson's time: a second lesson_changed on the same date used to send nothing."""
    worker_settings.update(SMS_TEXT_LESSON_CHANGED="{first_name}: čas je sada u {lesson_time}.",
                           SMS_DLR_MAX_SECONDS="0", DEDUP_SECONDS="0")
    book(moyklass, {2001: "Ana Ilić"})
    client = create_app(worker_settings).test_client()
    with running_worker(worker_settings):
        for sent, time_of_day in enumerate(("18:00", "19:00"), start=1):
            moyklass.lessons[LESSON]["beginTime"] = time_of_day
            assert client.post("/webhook", json=load_fixture("lesson_changed")).status_code == 202
            wait_until(lambda count=sent: len(oneclick.messages) == count, what="sent")
    assert [m["message"] for m in oneclick.messages] == ["Ana: čas je sada u 18:00.", "Ana: čas je sada u 19:00."]


def test_a_student_without_a_phone_gets_the_next_reminder_once_the_phone_is_fixed(worker_settings, moyklass,
                                                                                   oneclick):
    worker_settings.update(SMS_TEXT_LESSON_START_HOURS=REMINDER_TEXT, SMS_DLR_MAX_SECONDS="0", DEDUP_SECONDS="0",
                           USER_CACHE_SECONDS="0")
    book(moyklass, {2001: "Ana Ilić"})
    moyklass.users[2001]["phone"] = None
    client = create_app(worker_settings).test_client()
    store = settings_store(worker_settings)
    with running_worker(worker_settings):
        assert client.post("/webhook", json=load_fixture("lesson_start_hours")).status_code == 202
        wait_until(lambda: store.counts()[FAILED] == 1, what="FAILED: no phone")
        moyklass.users[2001]["phone"] = numbered_phone(2001)
        assert client.post("/webhook", json=load_fixture("lesson_start_hours")).status_code == 202
        wait_until(lambda: store.counts()[SENT] == 1, what="SENT")
    assert [m["phone"] for m in oneclick.messages] == [numbered_phone(2001)]


def test_a_changed_student_is_read_afresh_not_from_the_user_cache(settings, moyklass, oneclick):
    """A user_* event says the student changed: before, the cached old phone got the SMS for 5 minutes."""
    settings["SMS_TEXT_USER_CHANGED"] = "{first_name}, Vaši podaci su izmenjeni."
    moyklass.add_user(1001, "381641000001", name="Ana Ilić")
    client = create_app(settings).test_client()
    assert client.post("/webhook", json=load_fixture("sub_lessons_left")).status_code == 200
    moyklass.add_user(1001, "381649999999", name="Bojana Ilić")
    changed = load_fixture("user_changed") | {"object": {"userId": 1001}}
    assert client.post("/webhook", json=changed).status_code == 200
    assert [(m["phone"], m["message"]) for m in oneclick.messages][1] == (
        "381649999999", "Bojana, Vaši podaci su izmenjeni.")


def test_a_repeat_of_a_webhook_whose_student_message_failed_is_accepted_again_with_parents(settings, moyklass,
                                                                                           oneclick):
    """With SMS_RECIPIENTS=both the repeat used to match the parent's message and send nothing; then
    it made the parent's message again too, and a parent got one SMS per repeat (hostile pass).
    Only the failed recipient's message is made again."""
    settings.update(SMS_RECIPIENTS="both", SMS_PARENT_PHONE_ATTRIBUTE="parentPhone", USER_CACHE_SECONDS="0")
    moyklass.add_user(1001, None, name="Ana Ilić")
    parents(moyklass, u1001="0657770001")
    client = create_app(settings).test_client()
    assert client.post("/webhook", json=load_fixture("sub_lessons_left")).status_code == 404
    moyklass.users[1001]["phone"] = "381641000001"
    again = client.post("/webhook", json=load_fixture("sub_lessons_left"))
    assert again.get_json() == {"status": "success", "id": 3}
    store = settings_store(settings)
    assert [(m["id"], m["recipient"]) for m in map(store.message, (1, 2, 3))] == [
        (1, "student"), (2, "parent"), (3, "student")] and store.message(4) is None
    third = client.post("/webhook", json=load_fixture("sub_lessons_left"))
    assert third.get_json() == {"status": "success", "id": 3, "duplicate": True}


def test_retry_failed_keeps_a_reminder_messages_lesson_deadline(settings):
    """Before, retry-failed gave it SMS_VALID_SECONDS: a reminder went out after its lesson."""
    store = create_app(settings).extensions["sms_bulk_app"].store
    lesson_start = time.time() - 3600
    with store.transaction() as db:
        db.execute("INSERT INTO messages (created_at, updated_at, source, status, next_attempt_at, deadline, dedup_key)"
                   " VALUES (?, ?, 'reminder', 'FAILED', 0, ?, 'k')", (lesson_start, lesson_start, lesson_start))
    assert store.retry_failed(time.time() + 86400) == 1
    assert store.message(1)["deadline"] == lesson_start
    assert store.expire_overdue(time.time()) == 1  # not sent: its lesson has begun
