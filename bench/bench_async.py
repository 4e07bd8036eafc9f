"""Webhooks in async mode (202 once committed) while a worker drains them, under gunicorn.

    .venv/bin/python bench/bench_async.py [--rounds 3] [--seconds 8] [--concurrency 32]

The same load as bench_webhook.py (distinct users, 32 keep-alive clients, 2 gunicorn
workers) with WEBHOOK_MODE=async, while `python sms_bulk_app.py worker` looks the users up in
the fake MoyKlass and sends to the fake OneClick. Prints medians of the rounds.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import (
    ROOT,
    fake_settings,
    fire,
    load_options,
    running_fakes,
    running_gunicorn,
    running_workers,
    sub_lessons_left,
)

from store import DELIVERED, SENT, Store


def run_once(seconds: float, concurrency: int):
    with tempfile.TemporaryDirectory() as data_dir, running_fakes(0.0) as fakes:
        env = fake_settings(fakes) | {
            "DATA_DIR": data_dir, "SMS_PROVIDER": "oneclick", "MOYKLASS_RATE_PER_SEC": "1000000",
            "WEBHOOK_MODE": "async", "WEB_WORKERS": "2", "SMS_DLR_MAX_SECONDS": "0"}
        with running_gunicorn("sms_bulk_app:create_app()", env, ["-c", str(ROOT / "gunicorn.conf.py")]) as port:
            with running_workers(env, data_dir):
                fire(port, "/webhook", sub_lessons_left, concurrency, 1.0, expect=202)  # warm up
                result = fire(port, "/webhook", sub_lessons_left, concurrency, seconds, expect=202)
                counts = Store(Path(data_dir) / "sms_bulk_app.db").counts()
        return result, counts[SENT] + counts[DELIVERED], sum(counts.values())


def main() -> None:
    args = load_options(__doc__.splitlines()[0])
    rates, p50s, p99s, errors, drained = [], [], [], 0, []
    for round_number in range(1, args.rounds + 1):
        result, sent, queued = run_once(args.seconds, args.concurrency)
        rates.append(result.per_second)
        p50s.append(result.percentile(0.5))
        p99s.append(result.percentile(0.99))
        errors += result.errors
        drained.append(sent / queued)
        print(f"round {round_number}: {result.per_second:7.1f} webhooks/s, p50 {p50s[-1]:6.1f} ms,"
              f" p99 {p99s[-1]:6.1f} ms, errors {result.errors}; the worker sent {sent} of {queued}"
              f" meanwhile", flush=True)
    print(f"\nmedians of {args.rounds} rounds: {statistics.median(rates):.1f} webhooks/s,"
          f" p50 {statistics.median(p50s):.1f} ms, p99 {statistics.median(p99s):.1f} ms, errors {errors},"
          f" {statistics.median(drained):.0%} sent during the run")


if __name__ == "__main__":
    main()
