"""How fast the worker drains the outbox to the gateway, on SQLite and PostgreSQL, beside a bare keep-alive HTTP loop.

    .venv/bin/python bench/bench_drain.py [--messages 20000] [--workers 1,2] [--rounds 3]
                                          [--database sqlite|postgresql|both]

Queues the messages in a fresh database (a file, or a database on a throwaway PostgreSQL
cluster the script starts and stops), starts `python sms_bulk_app.py worker` (1, then 2 of them)
against a fake OneClick (its own process) with the rate limit off, and times the drain; then runs
a bare loop (http.client, keep-alive, as many threads as one worker) against the same fake.
Prints medians of the rounds, both backends side by side, and the workers' peak RSS.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time

from common import (
    add_database_option,
    bench_store,
    chosen_databases,
    fake_settings,
    fresh_database,
    postgres_for,
    print_side_by_side,
    running_fakes,
    running_workers,
)

from store import SENT
from tests.postgres import PostgresServer

CONCURRENCY = 8


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def drain(messages: int, workers: int, engine: str, server: PostgresServer | None) -> tuple[float, float]:
    """Messages per second to drain `messages`, and the peak RSS of the first worker in MB."""
    with (tempfile.TemporaryDirectory() as data_dir, fresh_database(engine, server, data_dir) as url,
          running_fakes(0.0) as fakes):
        store = bench_store(url)
        for start in range(0, messages, 10_000):
            store.enqueue_many("bench", 86400, [(f"+38164{1_000_000 + i:07d}", f"Poruka {i}", None, None)
                                                for i in range(start, min(start + 10_000, messages))])
        env = {"PATH": os.environ["PATH"], **fake_settings(fakes), "DATA_DIR": data_dir, "DATABASE_URL": url,
               "SMS_PROVIDER": "oneclick", "SMS_CONCURRENCY": str(CONCURRENCY), "SMS_DLR_MAX_SECONDS": "0"}
        started = time.monotonic()
        rss = 0.0
        waiting = "SELECT 1 FROM messages WHERE status IN ('QUEUED', 'SENDING') LIMIT 1"  # an index probe
        with running_workers(env, data_dir, workers) as processes:
            while store.connection().execute(waiting).fetchone():
                rss = max(rss, peak_rss_mb(processes[0].pid))
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError("a worker exited")
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            rss = max(rss, peak_rss_mb(processes[0].pid))
            if store.counts()[SENT] != messages:
                raise RuntimeError(f"not every message was SENT: {store.counts()}")
        return messages / elapsed, rss


def bare_loop(seconds: float = 5.0) -> float:
    """Requests per second of plain keep-alive POSTs to the same fake, CONCURRENCY threads."""
    with running_fakes(0.0) as fakes:
        url = http.client.urlsplit(fakes.oneclick_url)
        headers = {"username": "smartlab", "pwd": "oneclick-pass", "Content-Type": "application/json"}
        body = json.dumps({"sender": "SmartLab", "message": "Poruka", "phone": "381641000001"}).encode()
        stop_at = time.monotonic() + seconds
        counts = []

        def loop() -> None:
            connection, sent = http.client.HTTPConnection(url.hostname, url.port), 0
            while time.monotonic() < stop_at:
                connection.request("POST", url.path, body, headers)
                connection.getresponse().read()
                sent += 1
            counts.append(sent)

        threads = [threading.Thread(target=loop) for _ in range(CONCURRENCY)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2", help="numbers of worker processes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    add_database_option(parser)
    args = parser.parse_args()
    engines, counts = chosen_databases(args.database), [int(count) for count in args.workers.split(",")]
    rates: dict[tuple[str, int], list[float]] = {(e, c): [] for e in engines for c in counts}
    peaks: dict[tuple[str, int], list[float]] = {key: [] for key in rates}
    bares = []
    with postgres_for(engines) as server:
        for round_number in range(1, args.rounds + 1):
            for engine, count in rates:
                rate, rss = drain(args.messages, count, engine, server)
                rates[engine, count].append(rate)
                peaks[engine, count].append(rss)
                print(f"round {round_number}: {engine:<10} {count} worker(s) {rate:7.0f} messages/s"
                      f" ({rate / count:6.0f} per worker, peak RSS {rss:.0f} MB)", flush=True)
            bares.append(bare_loop())
            print(f"round {round_number}: bare loop {bares[-1]:7.0f} requests/s", flush=True)
    medians = {key: statistics.median(values) for key, values in rates.items()}
    rows = []
    for count in counts:
        rows.append((f"{count} worker(s): messages/s", {e: f"{medians[e, count]:.0f}" for e in engines}))
        rows.append((f"{count} worker(s): per worker", {e: f"{medians[e, count] / count:.0f}" for e in engines}))
        rows.append((f"{count} worker(s): peak RSS MB", {e: f"{max(peaks[e, count]):.0f}" for e in engines}))
    if len(counts) > 1:
        rows.append((f"{counts[-1]} workers / {counts[0]}",
                     {e: f"{medians[e, counts[-1]] / medians[e, counts[0]]:.2f}" for e in engines}))
    print_side_by_side(f"medians of {args.rounds} rounds, {args.messages} messages, {CONCURRENCY} senders per worker;"
                       f" bare loop {statistics.median(bares):.0f} requests/s ({CONCURRENCY} threads)", rows, engines)


if __name__ == "__main__":
    main()
