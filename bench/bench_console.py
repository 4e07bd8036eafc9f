"""The console's pages over a big database, on SQLite and PostgreSQL side by side.

    .venv/bin/python bench/bench_console.py [--messages 1000000] [--clients 100000] [--requests 50]
                                            [--database sqlite|postgresql|both]

Fills a fresh database (bulk inserts, as bench_mailings.py's fill) with `--clients` clients, 20
mailings, `--messages` messages over the last 14 days (sent, delivered, failed, some queued), 100,000
audit entries, 50 API keys, 50 templates and 20 users; runs gunicorn (1 worker, as production's
gunicorn.conf.py otherwise), logs in as an admin and asks each console page `--requests` times, one
at a time, after a warm-up: p50 and p99 in ms, the goal p99 < 200 ms. Then prints the query plan
(EXPLAIN QUERY PLAN / EXPLAIN) of each query the dashboard runs, to show the indexes they use.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from common import (
    ROOT,
    add_database_option,
    bench_store,
    chosen_databases,
    fresh_database,
    postgres_for,
    print_side_by_side,
    running_gunicorn,
)

import api_keys
from console import accounts, dashboard
from database import SQLITE
from store import Store
from store_postgresql import PostgresStore
from tests.postgres import PostgresServer

PASSWORD = "bench password 123"
DAYS = 14
BATCH = 50_000
GOAL_MS = 200.0
MAILINGS = 20
ROWS_PER_INSERT = 1000  # 18,000 parameters: under SQLite's limit (32,766) and PostgreSQL's (65,535)


def fill(store: Store, messages: int, clients: int) -> dict[str, int]:
    """Bulk inserts in one transaction; the ids the pages are asked for."""
    now = time.time()
    first = now - DAYS * 86400
    with store.transaction() as db:
        for start in range(0, clients, BATCH):
            db.executemany("INSERT INTO clients (phone, operator_code, timezone, name, created_at)"
                           " VALUES (?, ?, ?, ?, ?)",
                           [(f"+3816{i:08d}", f"6{i % 10}", "Europe/Belgrade", f"Klijent {i}", first)
                            for i in range(start, min(start + BATCH, clients))])
        db.execute("INSERT INTO client_tags (tag, client_id) SELECT 'svi', id FROM clients")
        for number in range(MAILINGS):
            db.execute("INSERT INTO mailings (created_at, updated_at, start_at, end_at, text, filter, state,"
                       " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (first, first, first + number * 3600, now + 86400, f"Zdravo {{first_name}} {number}",
                        '{"tags": ["svi"], "operator_codes": []}', "started", first + number * 3600))
        step = DAYS * 86400 / messages
        for start in range(0, messages, BATCH):
            rows = []
            for i in range(start, min(start + BATCH, messages)):
                created = first + i * step
                kind = i % 20
                status = "QUEUED" if i >= messages - 200 else "FAILED" if kind == 0 else \
                    "UNDELIVERED" if kind == 1 else "SENT" if kind < 6 else "DELIVERED"
                sent = created + 2 if status in ("SENT", "DELIVERED", "UNDELIVERED") else None
                done = created + 30 if status in ("FAILED", "DELIVERED", "UNDELIVERED") else None
                rows.append((created, created, "mailing" if i % 2 else "webhook", f"+3816{i % clients:08d}",
                             "Zdravo, upis počinje sutra.", 1, "oneclick", status, 1, created, created + 86400,
                             sent, done, "E42" if status == "FAILED" else None,
                             "rejected by the gateway" if status == "FAILED" else None,
                             (i % MAILINGS) + 1 if i % 2 else None, 0.02, "EUR"))
            for chunk in range(0, len(rows), ROWS_PER_INSERT):  # PostgreSQL runs its triggers per statement
                values = rows[chunk:chunk + ROWS_PER_INSERT]
                db.execute("INSERT INTO messages (created_at, updated_at, source, phone, text, segments, provider,"
                           " status, attempts, next_attempt_at, deadline, sent_at, done_at, error_code, last_error,"
                           " mailing_id, cost, currency) VALUES "
                           + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(values)),
                           [value for row in values for value in row])
        actors = [f"user{n}@school.rs" for n in range(5)] + ["key 1 (crm)", "cli (root)"]
        for start in range(0, 100_000, BATCH):
            db.executemany("INSERT INTO audit_log (at, channel, actor, actor_id, action, object_type, object_id,"
                           " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(first + i * 12, "console", actors[i % len(actors)], i % 5, "client.update", "client",
                             str(i % clients + 1), "fields: name") for i in range(start, start + BATCH)])
    for number in range(50):
        api_keys.create(store, f"key {number}", ["read"], None)
        store.create_template(f"template-{number}", f"Vaš kod je {{CODE}} ({number})", "bench", number % 2 == 0)
    for number in range(20):
        accounts.create(store, f"user{number}@school.rs", accounts.VIEWER, PASSWORD, now)
    accounts.create(store, "admin@school.rs", accounts.ADMIN, PASSWORD, now)
    if isinstance(store, PostgresStore):  # as autovacuum would have by then; SQLite's planner needs no statistics
        store.connection().execute("ANALYZE")
    return {"message": messages // 2, "mailing": 1, "client": clients // 2, "template": 1}


class Browser:
    """One keep-alive connection carrying the console's session cookie."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie = ""

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body, headers)
        response = self.connection.getresponse()
        text = response.read().decode()
        cookie = response.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return response.status, text

    def log_in(self) -> None:
        _, page = self.request("GET", "/login")
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
        status, _ = self.request("POST", "/login", urlencode({"email": "admin@school.rs", "password": PASSWORD,
                                                               "csrf_token": token}))
        assert status == 302, status


def pages(ids: dict[str, int]) -> list[tuple[str, str]]:
    return [("dashboard", "/"), ("messages search (7 days)", "/messages"),
            ("messages search by phone", "/messages?phone=%2B381600050000"),
            ("a message", f"/messages/{ids['message']}"), ("mailings", "/mailings"),
            ("a mailing (50,000 messages)", f"/mailings/{ids['mailing']}"), ("clients", "/clients"),
            ("a client", f"/clients/{ids['client']}"), ("templates", "/templates"), ("keys", "/keys"),
            ("users", "/users"), ("audit", "/audit"), ("audit by actor", "/audit?actor=cli+%28root%29"),
            ("providers", "/providers")]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(engine: str, server: PostgresServer | None, args: argparse.Namespace) -> tuple[dict[str, str], str]:
    """One backend: {page: "p50 / p99"}, and the dashboard's query plans."""
    with tempfile.TemporaryDirectory() as data_dir, fresh_database(engine, server, data_dir) as url:
        store = bench_store(url)
        started = time.perf_counter()
        ids = fill(store, args.messages, args.clients)
        print(f"{engine}: filled in {time.perf_counter() - started:.0f} s", flush=True)
        plans = dashboard_plans(store)
        env = {"PATH": os.environ["PATH"], "DATA_DIR": data_dir, "DATABASE_URL": url, "WEB_WORKERS": "1",
               "LOG_LEVEL": "warning", "SECRET_KEY": "b" * 40}
        results = {}
        with running_gunicorn("sms_bulk_app:create_app()", env, ["-c", str(ROOT / "gunicorn.conf.py")]) as port:
            browser = Browser(port)
            browser.log_in()
            for name, path in pages(ids):
                for _ in range(3):
                    status, _ = browser.request("GET", path)
                    assert status == 200, (path, status)
                times = []
                for _ in range(args.requests):
                    began = time.perf_counter()
                    browser.request("GET", path)
                    times.append((time.perf_counter() - began) * 1000)
                p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
                results[name] = f"{p50:.0f} / {p99:.0f}{'' if p99 < GOAL_MS else ' !'}"
                print(f"  {engine:<10} {name:<30} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms", flush=True)
        return results, plans


@contextmanager
def recording(store: Store) -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """The statements run through the store's connection meanwhile: (sql, params)."""
    real = store.connection()
    seen: list[tuple[str, tuple[Any, ...]]] = []

    class Recorder:
        def execute(self, sql: str, params: Any = ()) -> Any:
            seen.append((sql, tuple(params)))
            return real.execute(sql, params)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    store.connection = lambda: Recorder()  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del store.connection


def dashboard_plans(store: Store) -> str:
    with recording(store) as seen:
        dashboard.figures(store, "Europe/Belgrade", time.time())
    sqlite = not isinstance(store, PostgresStore)
    lines = []
    for sql, params in seen:
        lines.append(f"-- {sql[:150]}{'...' if len(sql) > 150 else ''}")
        plan = store.connection().execute(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql, params)
        lines += [f"   {(row[3] if sqlite else row[0])[:160]}" for row in plan]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    add_database_option(parser)
    args = parser.parse_args()
    engines = chosen_databases(args.database)
    results: dict[str, dict[str, str]] = {}
    plans: dict[str, str] = {}
    with postgres_for(engines) as server:
        for engine in engines:
            results[engine], plans[engine] = measure(engine, server, args)
    names = [name for name, _ in pages({"message": 1, "mailing": 1, "client": 1, "template": 1})]
    print_side_by_side(f"console pages, p50 / p99 ms over {args.requests} requests ({args.messages:,} messages,"
                       f" {args.clients:,} clients; ! misses p99 < {GOAL_MS:.0f} ms)",
                       [(name, {engine: results[engine][name] for engine in engines}) for name in names], engines)
    for engine in engines:
        print(f"\nthe dashboard's queries on {engine} ({'EXPLAIN QUERY PLAN' if engine == SQLITE else 'EXPLAIN'}):")
        print(plans[engine])


if __name__ == "__main__":
    main()
