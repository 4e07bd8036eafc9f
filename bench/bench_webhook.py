"""Webhooks/s and latency of SMSBulkApp beside the seed's approach, on the same fakes, in one run.

    .venv/bin/python bench/bench_webhook.py [--rounds 3] [--seconds 8] [--concurrency 32]

Each round runs both services against a gateway that answers at once and one that takes
200 ms; the table gives the median of the rounds. Both run under gunicorn with 2 workers:
SMSBulkApp as in production (gthread, gunicorn.conf.py), the seed with sync workers.
The fake MoyKlass has no rate limit here, so MOYKLASS_RATE_PER_SEC is lifted for the run:
against the real MoyKlass, phone lookups cap a school at 7 webhooks/s whatever the service.
"""
from __future__ import annotations

import tempfile

from common import ROOT, fake_settings, fire, load_options, median, running_fakes, running_gunicorn, sub_lessons_left


def run_once(which: str, latency: float, seconds: float, concurrency: int):
    with tempfile.TemporaryDirectory() as data_dir, running_fakes(latency) as fakes:
        env = fake_settings(fakes)
        if which == "seed":
            env["TOKEN_FILE_PATH"] = f"{data_dir}/token.json"
            # -c /dev/null: not our gunicorn.conf.py, whose threads would turn sync into gthread.
            target = ("bench.seed_app:app", ["-c", "/dev/null", "--workers", "2", "--worker-class", "sync"])
        else:
            env.update(DATA_DIR=data_dir, SMS_PROVIDER="oneclick", MOYKLASS_RATE_PER_SEC="1000000",
                       WEB_WORKERS="2")
            target = ("sms_bulk_app:create_app()", ["-c", str(ROOT / "gunicorn.conf.py")])
        with running_gunicorn(target[0], env, target[1]) as port:
            fire(port, "/webhook", sub_lessons_left, concurrency, 1.0)  # warm up: token, connections
            return fire(port, "/webhook", sub_lessons_left, concurrency, seconds)


def main() -> None:
    args = load_options(__doc__.splitlines()[0])
    scenarios = [(which, latency) for latency in (0.0, 0.2) for which in ("seed", "smsbulkapp")]
    results = {scenario: [] for scenario in scenarios}
    for round_number in range(1, args.rounds + 1):
        for scenario in scenarios:
            result = run_once(*scenario, args.seconds, args.concurrency)
            results[scenario].append(result)
            print(f"round {round_number}: {scenario[0]:<10} gateway {scenario[1] * 1000:>3.0f} ms:"
                  f" {result.per_second:8.1f} webhooks/s, p50 {result.percentile(0.5):7.1f} ms,"
                  f" p99 {result.percentile(0.99):7.1f} ms, errors {result.errors}"
                  + (f" (answers by status: {dict(result.statuses)})" if result.errors else ""), flush=True)
    print(f"\nmedians of {args.rounds} rounds, {args.concurrency} concurrent clients,"
          f" {args.seconds:g} s each")
    print(f"{'service':<11} {'gateway':>8} {'webhooks/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for (which, latency), runs in results.items():
        print(f"{which:<11} {latency * 1000:>6.0f}ms {median([r.per_second for r in runs]):>11.1f}"
              f" {median([r.percentile(0.5) for r in runs]):>8.1f}"
              f" {median([r.percentile(0.99) for r in runs]):>8.1f} {sum(r.errors for r in runs):>7}")


if __name__ == "__main__":
    main()
