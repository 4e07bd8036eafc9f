"""A mailing to many clients on SQLite and PostgreSQL: how long the fan-out into the outbox takes, its
peak memory, how fast the statistics endpoints answer over its messages, and a CSV import of clients.

    .venv/bin/python bench/bench_mailings.py [--clients 100000] [--requests 300] [--import-clients 20000]
                                             [--rounds 3] [--database sqlite|postgresql|both]

Each round and backend starts from a fresh database (a file, or a database on a throwaway
PostgreSQL cluster the script starts and stops) filled with `--clients` clients. The fan-out runs
in a process of its own (as in the worker) so its peak RSS is its own; the statistics are asked
over HTTP from gunicorn (1 worker), one request at a time; then `--import-clients` new clients
are POSTed as one CSV to /api/v1/clients/import on the same gunicorn, into the filled database.
Prints medians of the rounds, both backends side by side.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

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
import mailings
from database import parse_database_url
from models import MailingCreate
from sms_bulk_app import open_store
from store import Store
from tests.postgres import PostgresServer

SERVICE_TIMEOUT = 5.0  # DATABASE_TIMEOUT's default, as the worker opens the database


def fill(store: Store, count: int) -> None:
    with store.transaction() as db:
        for start in range(0, count, 50_000):
            db.executemany("INSERT INTO clients (phone, operator_code, timezone, name, created_at)"
                           " VALUES (?, ?, ?, ?, 0)",
                           [(f"+79{i:09d}", f"9{i % 100:02d}", "Europe/Moscow" if i % 2 else "Asia/Yekaterinburg",
                             f"Klijent {i}") for i in range(start, min(start + 50_000, count))])
        db.execute("INSERT INTO client_tags (tag, client_id) SELECT 'svi', id FROM clients")


def fan_out(url: str) -> None:
    """Child process: start the one due mailing, print seconds, messages queued and peak RSS (MB) as JSON."""
    store = open_store(parse_database_url(url), SERVICE_TIMEOUT)
    started = time.perf_counter()
    [(_, queued)] = mailings.start_due(store, time.time())
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "queued": queued,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def timed_gets(port: int, path: str, key: str, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        latencies.append((time.perf_counter() - started) * 1000)
    return sorted(latencies)


def import_csv(port: int, key: str, count: int) -> float:
    """Seconds to POST `count` new clients as one CSV (phones the filled clients do not have)."""
    body = "phone,name,tags\n" + "".join(f"+79{500_000_000 + i:09d},Uvezeni {i},uvoz;novi\n" for i in range(count))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/api/v1/clients/import", body.encode(),
                       {"Authorization": f"Bearer {key}", "Content-Type": "text/csv"})
    response = connection.getresponse()
    report = json.loads(response.read())
    elapsed = time.perf_counter() - started
    if response.status != 200 or report["created"] != count:
        raise RuntimeError(f"the import answered {response.status}: {str(report)[:500]}")
    return elapsed


def measure(engine: str, server: PostgresServer | None, args: argparse.Namespace) -> dict[str, float]:
    """One round on one backend: {measure: value}."""
    with tempfile.TemporaryDirectory() as data_dir, fresh_database(engine, server, data_dir) as url:
        store = bench_store(url)
        fill(store, args.clients)
        now = datetime.now(UTC)
        mailing = mailings.create(store, MailingCreate.model_validate({
            "start_at": now.isoformat(), "end_at": (now + timedelta(hours=3)).isoformat(),
            "text": "Zdravo {first_name}, upis počinje sutra.", "filter": {"all": True},
            "window": {"from": "09:00", "to": "21:00"}}))
        _, key = api_keys.create(store, "bench", ["read", "clients:write"], None)
        child = subprocess.run([sys.executable, __file__, "--fan-out", url], capture_output=True, text=True,
                               check=True)
        fanned = json.loads(child.stdout)
        if fanned["queued"] != args.clients:
            raise RuntimeError(f"the fan-out queued {fanned['queued']} messages for {args.clients} clients")
        result = {"fan-out s": fanned["seconds"], "fan-out peak RSS MB": fanned["rss_mb"]}
        env = {"PATH": os.environ["PATH"], "DATA_DIR": data_dir, "DATABASE_URL": url, "WEB_WORKERS": "1",
               "LOG_LEVEL": "warning"}
        with running_gunicorn("sms_bulk_app:create_app()", env, ["-c", str(ROOT / "gunicorn.conf.py")]) as port:
            for name, path in (("stats of the mailing", f"/api/v1/mailings/{mailing['id']}/stats"),
                               ("stats of all mailings", "/api/v1/mailings/stats")):
                timed_gets(port, path, key, 20)  # warm up
                latencies = timed_gets(port, path, key, args.requests)
                result[f"{name} p50 ms"] = statistics.median(latencies)
                result[f"{name} p99 ms"] = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            if args.import_clients:
                result[f"import of {args.import_clients} clients s"] = import_csv(port, key, args.import_clients)
    return result


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--fan-out":
        return fan_out(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300, help="statistics requests per endpoint")
    parser.add_argument("--import-clients", type=int, default=20_000, help="clients in the CSV (0: no import)")
    parser.add_argument("--rounds", type=int, default=3)
    add_database_option(parser)
    args = parser.parse_args()
    engines = chosen_databases(args.database)
    results: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
    with postgres_for(engines) as server:
        for round_number in range(1, args.rounds + 1):
            for engine in engines:
                results[engine].append(measure(engine, server, args))
                print(f"round {round_number}: {engine:<10} " + ", ".join(
                    f"{name} {value:.1f}" for name, value in results[engine][-1].items()), flush=True)
    names = list(results[engines[0]][0])
    rows = [(name, {engine: f"{statistics.median(r[name] for r in runs):.1f}" for engine, runs in results.items()})
            for name in names]
    print_side_by_side(f"medians of {args.rounds} rounds: a mailing to {args.clients} clients,"
                       f" {args.requests} statistics requests per endpoint", rows, engines)


if __name__ == "__main__":
    main()
