"""A burst of async webhooks, and a big lesson's reminder, against MoyKlass' real 7 requests/s.

    .venv/bin/python bench/bench_burst.py [--webhooks 1000] [--students 300] [--rounds 3]
                                          [--clients 8,16,64] [--drain-limit 60]

Run as production runs it: gunicorn with gunicorn.conf.py (WEBHOOK_MODE=async, 2 workers)
and one `python sms_bulk_app.py worker`, MOYKLASS_RATE_PER_SEC at its default (6). The fake
MoyKlass runs in a process of its own and answers 429 past 7 requests/s, as the real one does;
the fake OneClick (a process of its own too) answers at once. Each part of each round starts
everything afresh, with a new database.

1. `--webhooks` sub_lessons_left webhooks, one per student 1..N, posted as fast as `--clients`
   keep-alive clients go (a burst for each number in the list): answer latency, the time from
   the first webhook until the gateway has accepted every SMS (the fake's own timestamps), SMS
   per phone, MoyKlass' 429s. With c clients always waiting, the mean answer time is c divided
   by the service's throughput (Little's law): a latency goal holds up to some number of
   clients, so the burst is measured at several.
2. One lesson_start_hours webhook for a lesson (tomorrow, 17:00) of `--students` students: the
   time until the gateway has accepted all of theirs.

Waiting for the gateway stops after `--drain-limit` seconds; a part not done by then prints how
far it got. Prints each round, then the medians of the rounds.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from common import ROOT, Fakes, fake_settings, post_json, running_gunicorn, running_workers

from tests.fakes import FakeMoyKlass, FakeOneClick, numbered_phone

MOYKLASS_LIMIT = FakeMoyKlass.RATE_LIMIT  # requests/s, as MoyKlass allows
LESSON_ID = 610882
REMINDER_TEXT = "{first_name}, čas „{topic}” počinje {lesson_date} u {lesson_time}."
POLL_SECONDS = 0.05
SETTLE_SECONDS = 1.0  # after the last expected SMS: time for a duplicate to show
START_SECONDS = 30.0  # for a fake, gunicorn or the worker to come up


# --- the fakes, each in a process of its own ---------------------------------------------------

def _serve_fake(kind: str, users: int, lesson: dict[str, Any] | None, pipe: Connection) -> None:
    """A fake on a port of its own choosing (sent back first); answers "stats" on `pipe` until
    "stop", the parent's end closing, or an hour."""
    if kind == "moyklass":
        fake = FakeMoyKlass(numbered_users=users)  # 429 past 7 requests/s: enforce_rate_limit's default
        if lesson is not None:
            fake.add_lesson(**lesson)
    else:
        fake = FakeOneClick()
    fake.start(0)
    pipe.send(fake.port)
    deadline = time.monotonic() + 3600
    try:
        while time.monotonic() < deadline:
            if not pipe.poll(0.5):
                continue
            if pipe.recv() != "stats":
                break
            with fake.lock:
                pipe.send({"requests": len(fake.request_log), "rate_limited": fake.rate_limited,
                           "token_calls": fake.token_calls, "user_calls": fake.user_calls,
                           "lesson_calls": fake.lesson_calls})
    except (EOFError, OSError):
        pass
    finally:
        fake.stop()


@dataclass
class BurstFakes:
    fakes: Fakes
    oneclick_port: int
    moyklass_pipe: Connection

    def moyklass_stats(self) -> dict[str, int]:
        self.moyklass_pipe.send("stats")
        if not self.moyklass_pipe.poll(10):
            raise RuntimeError("the fake MoyKlass did not answer for its stats")
        return self.moyklass_pipe.recv()


@contextmanager
def running_burst_fakes(users: int, lesson: dict[str, Any] | None = None) -> Iterator[BurstFakes]:
    """The fake MoyKlass (users 1..`users`, `lesson`, 429 past 7 requests/s) and OneClick."""
    processes, pipes, ports = [], [], {}
    try:
        for kind in ("moyklass", "oneclick"):
            mine, theirs = multiprocessing.Pipe()
            process = multiprocessing.Process(target=_serve_fake, args=(kind, users, lesson, theirs), daemon=True)
            process.start()
            processes.append(process)
            pipes.append(mine)
            deadline = time.monotonic() + START_SECONDS
            while not mine.poll(0.1):
                if not process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the fake {kind} did not start")
            ports[kind] = mine.recv()
        yield BurstFakes(Fakes(f"http://127.0.0.1:{ports['moyklass']}/v1",
                               f"http://127.0.0.1:{ports['oneclick']}{FakeOneClick.SEND_PATH}"),
                         ports["oneclick"], pipes[0])
    finally:
        for pipe in pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass
            pipe.close()
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)


def get_json(connection: http.client.HTTPConnection, path: str) -> Any:
    connection.request("GET", path)
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")
    return json.loads(data)


# --- the service, as production runs it ------------------------------------------------------

@contextmanager
def running_service(fakes: BurstFakes, data_dir: str) -> Iterator[int]:
    """gunicorn (gunicorn.conf.py, WEBHOOK_MODE=async) and one worker, both ready; yields the port."""
    env = fake_settings(fakes.fakes) | {
        "DATA_DIR": data_dir, "SMS_PROVIDER": "oneclick", "WEBHOOK_MODE": "async",
        "SMS_TEXT_LESSON_START_HOURS": REMINDER_TEXT}  # MOYKLASS_RATE_PER_SEC: its default, 6
    with running_gunicorn("sms_bulk_app:create_app()", env, ["-c", str(ROOT / "gunicorn.conf.py")]) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        deadline = time.monotonic() + START_SECONDS
        while True:  # the app loaded, not just the port bound
            try:
                get_json(connection, "/health")
                break
            except (OSError, http.client.HTTPException, RuntimeError, ValueError):
                connection.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn's /health did not answer 200") from None
                time.sleep(0.1)
        connection.close()
        with running_workers(env, data_dir):
            log = Path(data_dir) / "sms_bulk_app.log"
            deadline = time.monotonic() + START_SECONDS
            while not (log.exists() and re.search(r"Worker \S+ started", log.read_text(errors="replace"))):
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not start")
                time.sleep(0.1)
            yield port


@dataclass
class Delivery:
    seconds: float | None  # from the first webhook until the gateway had accepted the last expected SMS
    accepted: int  # SMS the gateway had accepted when the wait ended
    waited: float  # how long the wait ran, from the first webhook
    phones: Counter[str] = field(default_factory=Counter)  # digits of each phone: SMS it got


def wait_for_gateway(oneclick_port: int, expected: int, started: float, limit: float) -> Delivery:
    """Until the fake gateway has accepted `expected` SMS or `limit` s from `started` have passed;
    then SETTLE_SECONDS more, so a duplicate would be seen."""
    connection = http.client.HTTPConnection("127.0.0.1", oneclick_port, timeout=10)
    try:
        while time.monotonic() < started + limit:
            if get_json(connection, "/_fake/stats")["messages"] >= expected:
                time.sleep(SETTLE_SECONDS)
                break
            time.sleep(POLL_SECONDS)
        waited = time.monotonic() - started
        messages = get_json(connection, "/_fake/messages")
    finally:
        connection.close()
    # The fake stamps each SMS with time.monotonic(), the same clock in every process on the machine.
    times = sorted(message["at"] for message in messages)
    seconds = times[expected - 1] - started if len(times) >= expected else None
    phones = Counter(re.sub(r"\D", "", message["phone"]) for message in messages)
    return Delivery(seconds, len(messages), waited, phones)


# --- part 1: the burst -------------------------------------------------------------------------

def sub_lessons_left(user_id: int) -> bytes:
    return json.dumps({"companyId": 48213, "event": "sub_lessons_left", "time": "2026-11-23T09:15:02+03:00",
                       "changedFields": [], "init": {"from": "CRM", "managerId": 1201},
                       "object": {"userId": user_id, "userSubscriptionId": 775300 + user_id,
                                  "subscriptionId": 3301, "lessonsLeft": 2}}).encode()


@dataclass
class Burst:
    started: float  # time.monotonic() of the first webhook sent
    posted: float  # seconds from the first webhook sent to the last one answered
    latencies: list[float]
    statuses: Counter[int]  # answers by HTTP status, 0: none

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000


def burst(port: int, webhooks: int, clients: int) -> Burst:
    """Each of `clients` clients opens its keep-alive connection (GET /health), then all post
    webhooks for users 1..`webhooks` as fast as they are answered."""
    user_ids = iter(range(1, webhooks + 1))
    take = threading.Lock()
    starts: list[float] = []
    ends: list[float] = []
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    ready = threading.Barrier(clients, timeout=START_SECONDS)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine_starts, mine, seen, last = [], [], Counter(), 0.0
        try:
            get_json(connection, "/health")
            ready.wait()
            for _ in range(webhooks):
                with take:
                    user_id = next(user_ids, None)
                if user_id is None:
                    break
                started = time.monotonic()
                status, connection = post_json(connection, "/webhook", sub_lessons_left(user_id))
                seen[status] += 1
                mine.append(time.monotonic() - started)
                mine_starts.append(started)
                last = time.monotonic()
        finally:
            connection.close()
            with take:
                starts.extend(mine_starts)
                ends.append(last)
                latencies.extend(mine)
                statuses.update(seen)

    pool = [threading.Thread(target=client) for _ in range(clients)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(300)
    if len(latencies) != webhooks:
        raise RuntimeError(f"{len(latencies)} of {webhooks} webhooks were posted")
    return Burst(min(starts), max(ends) - min(starts), latencies, statuses)


@dataclass
class BurstRound:
    burst: Burst
    delivery: Delivery
    moyklass: dict[str, int]


def run_burst(webhooks: int, clients: int, limit: float) -> BurstRound:
    with tempfile.TemporaryDirectory() as data_dir, running_burst_fakes(webhooks) as fakes:
        with running_service(fakes, data_dir) as port:
            fired = burst(port, webhooks, clients)
            delivery = wait_for_gateway(fakes.oneclick_port, webhooks, fired.started, limit)
            return BurstRound(fired, delivery, fakes.moyklass_stats())


def phones_verdict(phones: Counter[str], expected: set[str]) -> str:
    twice = sum(1 for phone, count in phones.items() if count > 1)
    strangers = len(set(phones) - expected)
    missing = len(expected - set(phones))
    if not (twice or strangers or missing):
        return f"each of {len(expected)} phones exactly once"
    return (f"{len(expected) - missing} of {len(expected)} phones got theirs, {twice} more than once,"
            f" {missing} none yet, {strangers} unexpected")


def delivery_text(delivery: Delivery, expected: int, since: str) -> str:
    if delivery.seconds is not None:
        return f"all {expected} SMS accepted {delivery.seconds:.2f} s after {since}"
    return (f"NOT all accepted: {delivery.accepted} of {expected} after {delivery.waited:.1f} s"
            f" ({delivery.accepted / delivery.waited:.1f} SMS/s)")


# --- part 2: a big lesson's reminder -------------------------------------------------------------

def lesson_start_hours(lesson_date: str) -> bytes:
    return json.dumps({"companyId": 48213, "event": "lesson_start_hours", "time": "2026-11-23T15:00:00+03:00",
                       "changedFields": [], "init": {"from": "cron"},
                       "object": {"lessonId": LESSON_ID, "classId": 3302, "date": lesson_date,
                                  "beginTime": "17:00"}}).encode()


@dataclass
class ReminderRound:
    status: int
    answer_ms: float
    delivery: Delivery
    moyklass: dict[str, int]


def run_reminder(students: int, limit: float) -> ReminderRound:
    # Tomorrow where the school is (DEFAULT_TIMEZONE): the messages expire when the lesson starts.
    lesson_date = (datetime.now(ZoneInfo("Europe/Belgrade")) + timedelta(days=1)).date().isoformat()
    lesson = {"lesson_id": LESSON_ID, "date": lesson_date, "begin_time": "17:00", "topic": "Robotika",
              "records": [{"userId": user_id} for user_id in range(1, students + 1)]}
    with tempfile.TemporaryDirectory() as data_dir, running_burst_fakes(students, lesson) as fakes:
        with running_service(fakes, data_dir) as port:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                get_json(connection, "/health")  # the connection is open before the clock starts
                started = time.monotonic()
                connection.request("POST", "/webhook", lesson_start_hours(lesson_date),
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                answer_ms = (time.monotonic() - started) * 1000
            finally:
                connection.close()
            delivery = wait_for_gateway(fakes.oneclick_port, students, started, limit)
            return ReminderRound(response.status, answer_ms, delivery, fakes.moyklass_stats())


# --- the report ----------------------------------------------------------------------------------

def moyklass_text(stats: dict[str, int]) -> str:
    return (f"MoyKlass: {stats['requests']} requests ({stats['token_calls']} token, {stats['user_calls']} users,"
            f" {stats['lesson_calls']} lessons), {stats['rate_limited']} answered 429")


def client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("every number of clients must be positive")
    return counts


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=1000, help="webhooks of the burst, one per student")
    parser.add_argument("--students", type=int, default=300, help="students of the reminded lesson")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=client_counts, default=[8, 16, 64],
                        help="keep-alive clients posting the burst, a comma list: one burst for each")
    parser.add_argument("--drain-limit", type=float, default=60.0,
                        help="seconds to wait for the gateway to accept every SMS of a part")
    args = parser.parse_args()
    if min(args.webhooks, args.students, args.rounds) < 1 or args.drain_limit <= 0:
        parser.error("every option must be positive")
    return args


def med(values: list[float]) -> float:
    return statistics.median(values)


def burst_summary(bursts: list[BurstRound], clients: int, webhooks: int, expected_phones: set[str],
                  limit: float) -> None:
    statuses = sum((one.burst.statuses for one in bursts), Counter())
    print(f"burst of {webhooks} webhooks from {clients} clients: answers {dict(sorted(statuses.items()))}"
          f" (all rounds; goal: all 202), p50 {med([one.burst.percentile(0.5) for one in bursts]):.1f} ms,"
          f" p99 {med([one.burst.percentile(0.99) for one in bursts]):.1f} ms (goal < 100),"
          f" max {med([max(one.burst.latencies) * 1000 for one in bursts]):.1f} ms; all answered"
          f" {med([one.burst.posted for one in bursts]):.2f} s after the first was sent"
          f" ({med([webhooks / one.burst.posted for one in bursts]):.0f} webhooks/s)")
    done = [one.delivery.seconds for one in bursts if one.delivery.seconds is not None]
    if len(done) == len(bursts):
        print(f"  all {webhooks} SMS accepted by the gateway {med(done):.2f} s after the first webhook (goal < 5)")
    else:
        rate = med([one.delivery.accepted / one.delivery.waited for one in bursts])
        print(f"  all {webhooks} SMS accepted within {limit:g} s in {len(done)} of {len(bursts)}"
              f" rounds (goal < 5 s); accepted by the end of the wait: "
              f"{med([one.delivery.accepted for one in bursts]):.0f} at {rate:.1f} SMS/s, so all of them"
              f" would take about {webhooks / rate:.0f} s")
    exact = sum(1 for one in bursts if phones_verdict(one.delivery.phones, expected_phones).startswith("each"))
    twice = sum(sum(1 for count in one.delivery.phones.values() if count > 1) for one in bursts)
    print(f"  each phone exactly once in {exact} of {len(bursts)} rounds; phones with more than one SMS: {twice}"
          f" (all rounds)")
    print(f"  MoyKlass 429s: {sum(one.moyklass['rate_limited'] for one in bursts)} (all rounds; goal 0);"
          f" MoyKlass requests: {med([one.moyklass['requests'] for one in bursts]):.0f}")


def main() -> None:
    args = options()
    expected_phones = {numbered_phone(user_id) for user_id in range(1, args.webhooks + 1)}
    lesson_phones = {numbered_phone(user_id) for user_id in range(1, args.students + 1)}
    bursts: dict[int, list[BurstRound]] = {clients: [] for clients in args.clients}
    reminders: list[ReminderRound] = []
    print(f"{args.webhooks} sub_lessons_left webhooks from {','.join(map(str, args.clients))} keep-alive clients;"
          f" a lesson of {args.students} students; MoyKlass fake: 429 past {MOYKLASS_LIMIT} requests/s;"
          f" MOYKLASS_RATE_PER_SEC 6 (default); WEBHOOK_MODE=async, gunicorn.conf.py, 1 worker", flush=True)
    for round_number in range(1, args.rounds + 1):
        for clients in args.clients:
            one = run_burst(args.webhooks, clients, args.drain_limit)
            bursts[clients].append(one)
            print(f"round {round_number} burst, {clients} clients: answers {dict(sorted(one.burst.statuses.items()))},"
                  f" p50 {one.burst.percentile(0.5):.1f} ms, p99 {one.burst.percentile(0.99):.1f} ms,"
                  f" max {max(one.burst.latencies) * 1000:.1f} ms, all answered in {one.burst.posted:.2f} s;"
                  f" {delivery_text(one.delivery, args.webhooks, 'the first webhook')};"
                  f" {phones_verdict(one.delivery.phones, expected_phones)}; {moyklass_text(one.moyklass)}",
                  flush=True)
        two = run_reminder(args.students, args.drain_limit)
        reminders.append(two)
        print(f"round {round_number} lesson: webhook answered {two.status} in {two.answer_ms:.1f} ms;"
              f" {delivery_text(two.delivery, args.students, 'the webhook')};"
              f" {phones_verdict(two.delivery.phones, lesson_phones)}; {moyklass_text(two.moyklass)}", flush=True)

    print(f"\nmedians of {args.rounds} rounds")
    for clients, rounds in bursts.items():
        burst_summary(rounds, clients, args.webhooks, expected_phones, args.drain_limit)
    print(f"the original service's model (computed, not run): one MoyKlass lookup per webhook at"
          f" {MOYKLASS_LIMIT} requests/s needs at least {args.webhooks}/{MOYKLASS_LIMIT}"
          f" = {math.ceil(args.webhooks / MOYKLASS_LIMIT)} s for the burst")
    done = [two.delivery.seconds for two in reminders if two.delivery.seconds is not None]
    answers = Counter(two.status for two in reminders)
    if len(done) == len(reminders):
        timing = f"all {args.students} SMS accepted {med(done):.2f} s after the webhook (goal < 3)"
    else:
        timing = (f"all {args.students} SMS accepted within {args.drain_limit:g} s in {len(done)} of"
                  f" {len(reminders)} rounds (goal < 3 s)")
    exact = sum(1 for two in reminders if phones_verdict(two.delivery.phones, lesson_phones).startswith("each"))
    print(f"lesson of {args.students} students: webhook answers {dict(answers)}, {timing};"
          f" each phone exactly once in {exact} of {len(reminders)} rounds;"
          f" MoyKlass 429s: {sum(two.moyklass['rate_limited'] for two in reminders)};"
          f" MoyKlass requests: {med([two.moyklass['requests'] for two in reminders]):.0f}")


if __name__ == "__main__":
    main()
