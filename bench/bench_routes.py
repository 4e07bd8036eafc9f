"""Two providers at once: the drain routed half and half, and the failover when the first one dies mid-drain.

    .venv/bin/python bench/bench_routes.py [--messages 20000] [--rounds 3] [--database sqlite|postgresql|both]

Everything on 127.0.0.1: a fake OneClick (tests/fakes.py) and a fake SMS Aero (tests/fake_gateways.py,
journalling each SMS it accepts to a file) in a process each, one `python sms_bulk_app.py worker`
(8 senders, rate limits off), a fresh database per drain.

(a) Routes: half the messages to +381 numbers, half to +7 (`SMS_ROUTES=381=oneclick; 7=smsaero`),
    against the same messages all to OneClick (`SMS_PROVIDERS=oneclick`), in the same round.
    Checked: every message SENT, once, each provider took its half.
(b) Failover: every number on `*=smsaero,oneclick`; when SMS Aero has taken half the messages its
    process is killed (SIGKILL). Measured from the kill: the first SMS OneClick takes, and the start
    of steady sending through it (the first 1 s window with at least 80% of OneClick's mean rate after
    the kill). Delayed: the messages whose send failed at SMS Aero and went on to OneClick, with the
    time from that failure (the worker's warning) to their SENT. A message whose request was out when
    SMS Aero died has an unknown outcome: it stays QUEUED for SMS Aero alone (never OneClick), and is
    counted apart. Checked against both fakes' logs: no number twice, none through both, every other
    message SENT through the provider the database names.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import (
    ROOT,
    add_database_option,
    bench_store,
    chosen_databases,
    free_port,
    fresh_database,
    postgres_for,
    print_side_by_side,
    wait_for_port,
)

from store import SENT, Store
from tests import fake_gateways, fakes
from tests.postgres import PostgresServer

CONCURRENCY = 8
STEADY_SHARE = 0.8  # steady sending: a 1 s window with this share of the second provider's mean rate
WAITING = "SELECT count(*) FROM messages WHERE status IN ('QUEUED', 'SENDING') AND unknown_outcomes = 0"
# The worker's warnings (stderr): a send SMS Aero did not take, failed over at once or queued again.
FAILED_SEND = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING: (?:smsaero did not take message (\d+) "
                         r"|Gateway did not take message (\d+) .* via smsaero)")


@dataclass
class Gateways:
    oneclick: multiprocessing.Process
    smsaero: multiprocessing.Process
    env: dict[str, str]  # the worker's settings for both
    oneclick_port: int
    journal: Path  # SMS Aero's: every SMS it accepted, a JSON line each

    def oneclick_messages(self) -> list[dict]:
        """Every SMS the fake OneClick accepted, with `at` (time.monotonic, the same clock here)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.oneclick_port}/_fake/messages", timeout=30) as answer:
            return json.load(answer)

    def smsaero_messages(self) -> list[dict]:
        return [json.loads(line) for line in self.journal.read_text().splitlines()]


@contextmanager
def running_gateways(data_dir: str) -> Iterator[Gateways]:
    """The fake OneClick and SMS Aero, a process each, stopped (if still alive) at the end."""
    ports = {"oneclick": free_port(), "smsaero": free_port()}
    journal = Path(data_dir) / "smsaero.jsonl"
    oneclick = multiprocessing.Process(target=fakes.serve, args=("oneclick", ports["oneclick"]), daemon=True)
    smsaero = multiprocessing.Process(target=fake_gateways.serve, args=(ports["smsaero"], str(journal)), daemon=True)
    for process in (oneclick, smsaero):
        process.start()
    try:
        for port in ports.values():
            wait_for_port(port)
        aero = fake_gateways.FakeSmsAero()
        env = {"ONECLICK_API_URL": f"http://127.0.0.1:{ports['oneclick']}{fakes.FakeOneClick.SEND_PATH}",
               "ONECLICK_USERNAME": "smartlab", "ONECLICK_PASSWORD": "oneclick-pass",
               "SMSAERO_API_URL": f"http://127.0.0.1:{ports['smsaero']}/v2", "SMSAERO_EMAIL": aero.email,
               "SMSAERO_API_KEY": aero.api_key}
        yield Gateways(oneclick, smsaero, env, ports["oneclick"], journal)
    finally:
        for process in (oneclick, smsaero):
            if process.is_alive():
                process.terminate()
            process.join()


@contextmanager
def running_worker(env: dict[str, str], data_dir: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    """One `python sms_bulk_app.py worker`, its stderr (warnings and errors) in a file; SIGTERM at the end."""
    stderr = Path(data_dir) / "worker.stderr"
    with stderr.open("w") as output:
        worker = subprocess.Popen([sys.executable, str(ROOT / "sms_bulk_app.py"), "worker"], cwd=data_dir,
                                  env={"PATH": os.environ["PATH"], **env}, stdout=subprocess.DEVNULL, stderr=output)
        try:
            yield worker, stderr
        finally:
            worker.terminate()
            worker.wait()


def queue(store: Store, phones: list[str]) -> None:
    for start in range(0, len(phones), 10_000):
        store.enqueue_many("bench", 86400, [(phone, f"Poruka {start + i}", None, None)
                                            for i, phone in enumerate(phones[start:start + 10_000])])


def wait_drained(store: Store, worker: subprocess.Popen) -> None:
    """Until no message is waiting but those held for a provider after an unknown outcome."""
    while store.connection().execute(WAITING).fetchone()[0]:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        time.sleep(0.05)


def sent_by_provider(store: Store) -> Counter[str]:
    rows = store.connection().execute(f"SELECT provider, count(*) FROM messages WHERE status = '{SENT}'"
                                      " GROUP BY provider").fetchall()
    return Counter(dict(rows))


def drain(phones: list[str], providers: str, routes: str, engine: str, server: PostgresServer | None) -> float:
    """Messages per second to drain `phones`, after checking each SMS went once, through its route's provider."""
    with (tempfile.TemporaryDirectory() as data_dir, fresh_database(engine, server, data_dir) as url,
          running_gateways(data_dir) as gateways):
        store = bench_store(url)
        queue(store, phones)
        env = {**gateways.env, "DATA_DIR": data_dir, "DATABASE_URL": url, "SMS_PROVIDERS": providers,
               "SMS_ROUTES": routes, "SMS_CONCURRENCY": str(CONCURRENCY), "SMS_DLR_MAX_SECONDS": "0"}
        started = time.monotonic()
        with running_worker(env, data_dir) as (worker, _):
            wait_drained(store, worker)
            elapsed = time.monotonic() - started
        took = {"oneclick": Counter("+" + m["phone"] for m in gateways.oneclick_messages()),
                "smsaero": Counter("+" + m["number"] for m in gateways.smsaero_messages())}
        expected = {name: Counter(phone for phone in phones if route_of(phone, routes) == name) for name in took}
        if store.counts()[SENT] != len(phones) or took != expected \
                or sent_by_provider(store) != Counter({k: len(v) for k, v in expected.items() if v}):
            raise RuntimeError(f"not each message SENT once through its route: {store.counts()},"
                               f" {sent_by_provider(store)}, fakes took {[len(v) for v in took.values()]}")
        return len(phones) / elapsed


def route_of(phone: str, routes: str) -> str:
    """The first provider of `phone`'s route (the routes of (a): `prefix=provider` each, no `*`)."""
    entries = dict(entry.strip().split("=") for entry in routes.split(";") if entry.strip())
    matching = [prefix for prefix in entries if phone[1:].startswith(prefix)]
    return entries[max(matching, key=len)] if matching else "oneclick"


@dataclass
class Failover:
    first_s: float  # from the kill to the first SMS OneClick took
    steady_s: float  # from the kill to steady sending through OneClick
    delayed: int  # SENT after a send SMS Aero did not take
    max_extra_s: float  # the longest of those from the failed send to SENT
    unknown: int  # outcome unknown at the kill: held for SMS Aero, not SENT
    unknown_taken: int  # of those, how many SMS Aero had accepted before it died
    before: float  # messages/s through SMS Aero before the kill
    after: float  # messages/s through OneClick after it


def failover(messages: int, engine: str, server: PostgresServer | None) -> Failover:
    """Drain `messages` on `*=smsaero,oneclick`, killing SMS Aero when it has taken half."""
    phones = [f"+38164{1_000_000 + i:07d}" for i in range(messages)]
    with (tempfile.TemporaryDirectory() as data_dir, fresh_database(engine, server, data_dir) as url,
          running_gateways(data_dir) as gateways):
        store = bench_store(url)
        queue(store, phones)
        env = {**gateways.env, "DATA_DIR": data_dir, "DATABASE_URL": url, "SMS_PROVIDERS": "smsaero,oneclick",
               "SMS_ROUTES": "*=smsaero,oneclick", "SMS_CONCURRENCY": str(CONCURRENCY), "SMS_DLR_MAX_SECONDS": "0"}
        with running_worker(env, data_dir) as (worker, stderr):
            taken = 0
            with gateways.journal.open("rb") as journal:
                while taken < messages // 2:
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited with {worker.returncode}")
                    taken += journal.read().count(b"\n")
                    time.sleep(0.005)
            killed_at, killed_wall = time.monotonic(), time.time()
            gateways.smsaero.kill()
            wait_drained(store, worker)
        aero, oneclick = gateways.smsaero_messages(), gateways.oneclick_messages()
        return check_failover(store, phones, aero, oneclick, stderr, killed_at, killed_wall)


def check_failover(store: Store, phones: list[str], aero: list[dict], oneclick: list[dict], stderr: Path,
                   killed_at: float, killed_wall: float) -> Failover:
    """The figures of one failover, after checking that nothing was lost or sent twice."""
    through_aero = Counter("+" + m["number"] for m in aero)
    through_oneclick = Counter("+" + m["phone"] for m in oneclick)
    rows = store.connection().execute("SELECT id, phone, status, provider, unknown_outcomes, sent_at"
                                      " FROM messages").fetchall()
    twice = [phone for phone, n in (through_aero + through_oneclick).items() if n > 1]
    sent = {row[1]: row[3] for row in rows if row[2] == SENT}
    unknown = [row for row in rows if row[2] != SENT]
    problems = []
    if twice:
        problems.append(f"{len(twice)} numbers sent twice (e.g. {twice[0]})")
    if any(row[2] != "QUEUED" or row[3] != "smsaero" or not row[4] for row in unknown):
        problems.append(f"messages neither SENT nor held after an unknown outcome: {unknown[:3]}")
    if {phone for phone, provider in sent.items() if provider == "oneclick"} != set(through_oneclick):
        problems.append("OneClick's log differs from the messages the database says it sent")
    if not {phone for phone, provider in sent.items() if provider == "smsaero"} <= set(through_aero):
        problems.append("a message the database says SMS Aero sent is not in its journal")
    if set(through_aero) - set(sent) - {row[1] for row in unknown}:
        problems.append("SMS Aero's journal has a message that is neither SENT by it nor of unknown outcome")
    if len(sent) + len(unknown) != len(phones):
        problems.append(f"{len(phones) - len(sent) - len(unknown)} messages lost")
    if problems:
        raise RuntimeError("; ".join(problems))
    failed_at: dict[int, float] = {}
    for line in stderr.read_text().splitlines():
        if match := FAILED_SEND.match(line):
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            failed_at.setdefault(int(match.group(2) or match.group(3)), at)
    sent_at = {row[0]: row[5] for row in rows if row[2] == SENT}
    extra = [sent_at[message_id] - at for message_id, at in failed_at.items() if message_id in sent_at]
    after = sorted(m["at"] - killed_at for m in oneclick)
    before = [m["at"] for m in aero if m["at"] <= killed_at]
    rate_after = len(after) / (after[-1] - after[0]) if len(after) > 1 else float("nan")
    steady = next((t for i, t in enumerate(after)
                   if sum(1 for u in after[i:] if u < t + 1.0) >= STEADY_SHARE * rate_after), float("nan"))
    return Failover(after[0], steady, len(extra), max(extra, default=0.0), len(unknown),
                    sum(1 for row in unknown if row[1] in through_aero),
                    len(before) / (before[-1] - before[0]), rate_after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    add_database_option(parser)
    parser.set_defaults(database="sqlite")
    args = parser.parse_args()
    engines = chosen_databases(args.database)
    phones = [f"+38164{1_000_000 + i:07d}" if i % 2 else f"+7916{1_000_000 + i:07d}" for i in range(args.messages)]
    drains = {"one provider": ("oneclick", ""), "two, routed": ("oneclick,smsaero", "381=oneclick; 7=smsaero")}
    rates: dict[tuple[str, str], list[float]] = {(e, name): [] for e in engines for name in drains}
    failovers: dict[str, list[Failover]] = {e: [] for e in engines}
    with postgres_for(engines) as server:
        for round_number in range(1, args.rounds + 1):
            for engine in engines:
                for name, (providers, routes) in drains.items():
                    rates[engine, name].append(drain(phones, providers, routes, engine, server))
                    print(f"round {round_number}: {engine:<10} {name:<12} {rates[engine, name][-1]:6.0f} messages/s",
                          flush=True)
                result = failover(args.messages, engine, server)
                failovers[engine].append(result)
                print(f"round {round_number}: {engine:<10} failover: first {result.first_s * 1000:.0f} ms,"
                      f" steady {result.steady_s * 1000:.0f} ms, {result.delayed} delayed (max"
                      f" {result.max_extra_s * 1000:.1f} ms), {result.unknown} unknown ({result.unknown_taken} taken by"
                      f" SMS Aero), {result.before:.0f}/s before, {result.after:.0f}/s after", flush=True)

    def middle(engine: str, field: str) -> float:
        return statistics.median(getattr(result, field) for result in failovers[engine])

    medians = {key: statistics.median(values) for key, values in rates.items()}
    rows = [(f"{name}: messages/s", {e: f"{medians[e, name]:.0f}" for e in engines}) for name in drains]
    rows.append(("two / one", {e: f"{medians[e, 'two, routed'] / medians[e, 'one provider']:.2f}" for e in engines}))
    rows += [("failover: first via OneClick, ms", {e: f"{middle(e, 'first_s') * 1000:.0f}" for e in engines}),
             ("failover: steady via OneClick, ms", {e: f"{middle(e, 'steady_s') * 1000:.0f}" for e in engines}),
             ("failover: delayed messages", {e: f"{middle(e, 'delayed'):.0f}" for e in engines}),
             ("failover: max extra delay, ms", {e: f"{middle(e, 'max_extra_s') * 1000:.1f}" for e in engines}),
             ("failover: unknown outcome (not SENT)", {e: f"{middle(e, 'unknown'):.0f}" for e in engines}),
             ("failover: messages/s before / after", {e: f"{middle(e, 'before'):.0f} / {middle(e, 'after'):.0f}"
                                                      for e in engines})]
    print_side_by_side(f"medians of {args.rounds} rounds, {args.messages} messages, 1 worker, {CONCURRENCY} senders",
                       rows, engines)


if __name__ == "__main__":
    main()
