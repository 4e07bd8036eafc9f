"""How fast the worker drains the outbox to the gateway, beside a bare keep-alive HTTP loop.

    .venv/bin/python bench/bench_drain.py [--messages 100000] [--workers 1] [--rounds 3]

Queues the messages in a fresh database, starts `python sms_bulk_app.py worker` against a
fake OneClick (its own process) with the rate limit off, and times the drain; then runs a
bare loop (http.client, keep-alive, as many threads as the worker) against the same fake.
Prints medians of the rounds and the worker's peak RSS.
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
from pathlib import Path

from common import fake_settings, running_fakes, running_workers

from store import SENT, Store

CONCURRENCY = 8


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def drain(messages: int, workers: int) -> tuple[float, float]:
    """Messages per second to drain `messages`, and the peak RSS of the first worker in MB."""
    with tempfile.TemporaryDirectory() as data_dir, running_fakes(0.0) as fakes:
        store = Store(Path(data_dir) / "sms_bulk_app.db")
        store.initialize()
        for start in range(0, messages, 10_000):
            store.enqueue_many("bench", 86400, [(f"+38164{1_000_000 + i:07d}", f"Poruka {i}", None, None)
                                                for i in range(start, min(start + 10_000, messages))])
        env = {"PATH": os.environ["PATH"], **fake_settings(fakes), "DATA_DIR": data_dir,
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
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    drains, peaks, bares = [], [], []
    for round_number in range(1, args.rounds + 1):
        rate, rss = drain(args.messages, args.workers)
        bare = bare_loop()
        drains.append(rate)
        peaks.append(rss)
        bares.append(bare)
        print(f"round {round_number}: worker {rate:7.0f} messages/s (peak RSS {rss:.0f} MB),"
              f" bare loop {bare:7.0f} requests/s", flush=True)
    print(f"\nmedians of {args.rounds} rounds, {args.messages} messages, {args.workers} worker(s),"
          f" {CONCURRENCY} senders each")
    print(f"worker drain   {statistics.median(drains):7.0f} messages/s")
    print(f"bare loop      {statistics.median(bares):7.0f} requests/s")
    print(f"ratio          {statistics.median(drains) / statistics.median(bares):7.2f}")
    print(f"worker peak RSS {max(peaks):6.0f} MB")


if __name__ == "__main__":
    main()
