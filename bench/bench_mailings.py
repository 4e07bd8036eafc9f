"""A mailing to 100,000 clients: how long the fan-out into the outbox takes, its peak memory,
and how fast the statistics endpoints answer over 100,000 messages.

    .venv/bin/python bench/bench_mailings.py [--clients 100000] [--requests 300]

The fan-out runs in a process of its own (as in the worker) so its peak RSS is its own;
the statistics are asked over HTTP from gunicorn (1 worker), one request at a time.
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
from pathlib import Path

from common import ROOT, running_gunicorn

import api_keys
import mailings
from schemas import MailingCreate
from store import Store


def fill(store: Store, count: int) -> None:
    with store.transaction() as db:
        db.executemany("INSERT INTO clients (phone, operator_code, timezone, name, created_at) VALUES (?, ?, ?, ?, 0)",
                       [(f"+79{i:09d}", f"9{i % 100:02d}", "Europe/Moscow" if i % 2 else "Asia/Yekaterinburg",
                         f"Klijent {i}") for i in range(count)])
        db.execute("INSERT INTO client_tags (tag, client_id) SELECT 'svi', id FROM clients")


def fan_out(database: str) -> None:
    """Child process: start the one due mailing, print seconds and peak RSS (MB) as JSON."""
    store = Store(Path(database))
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


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--fan-out":
        return fan_out(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        database = Path(data_dir) / "sms_bulk_app.db"
        store = Store(database)
        store.initialize()
        fill(store, args.clients)
        now = datetime.now(UTC)
        mailing = mailings.create(store, MailingCreate.model_validate({
            "start_at": now.isoformat(), "end_at": (now + timedelta(hours=3)).isoformat(),
            "text": "Zdravo {first_name}, upis počinje sutra.", "filter": {"all": True},
            "window": {"from": "09:00", "to": "21:00"}}))
        _, key = api_keys.create(store, "bench", ["read"], None)
        child = subprocess.run([sys.executable, __file__, "--fan-out", str(database)], capture_output=True, text=True,
                               check=True)
        result = json.loads(child.stdout)
        print(f"fan-out of a mailing to {result['queued']} clients: {result['seconds']:.2f} s,"
              f" peak RSS {result['rss_mb']:.0f} MB")
        env = {"PATH": os.environ["PATH"], "DATA_DIR": data_dir, "WEB_WORKERS": "1", "LOG_LEVEL": "warning"}
        with running_gunicorn("sms_bulk_app:create_app()", env, ["-c", str(ROOT / "gunicorn.conf.py")]) as port:
            for path in (f"/api/v1/mailings/{mailing['id']}/stats", "/api/v1/mailings/stats"):
                timed_gets(port, path, key, 20)  # warm up
                latencies = timed_gets(port, path, key, args.requests)
                p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                print(f"GET {path}: p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms"
                      f" ({args.requests} requests over {result['queued']} messages)")


if __name__ == "__main__":
    main()
