"""Does SMS_RATE_PER_SEC hold over a minute with several workers sharing it?

    .venv/bin/python bench/bench_rate.py [--rate 50] [--workers 2] [--seconds 60]

Queues more messages than the run can send, starts the workers against the fake OneClick, and
counts what they sent over the window (after a 3 s start-up).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import fake_settings, running_fakes, running_workers

from store import SENT, Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir, running_fakes(0.0) as fakes:
        store = Store(Path(data_dir) / "sms_bulk_app.db")
        store.initialize()
        count = int(args.rate * (args.seconds + 10))
        store.enqueue_many("bench", 86400, [(f"+38164{1_000_000 + i:07d}", f"Poruka {i}", None, None)
                                            for i in range(count)])
        env = {"PATH": os.environ["PATH"], **fake_settings(fakes), "DATA_DIR": data_dir, "SMS_PROVIDER": "oneclick",
               "SMS_RATE_PER_SEC": str(args.rate), "SMS_DLR_MAX_SECONDS": "0"}
        with running_workers(env, data_dir, args.workers):
            time.sleep(3)
            before, started = store.counts()[SENT], time.monotonic()
            time.sleep(args.seconds)
            sent, elapsed = store.counts()[SENT] - before, time.monotonic() - started
    rate = sent / elapsed
    print(f"{args.workers} workers, SMS_RATE_PER_SEC={args.rate:g}: {sent} sent in {elapsed:.1f} s"
          f" = {rate:.2f}/s ({(rate / args.rate - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
