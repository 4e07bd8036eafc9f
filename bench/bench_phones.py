"""Phones as gateways: 10 simulated phones (tests/phone_sim.py, the app's requests) drain 10,000 messages.

    .venv/bin/python bench/bench_phones.py [--phones 10] [--messages 10000] [--database-url postgresql://...]

Real gunicorn (2 workers x 16 threads), one `sms_bulk_app.py worker`, the event stream process, all on
127.0.0.1, every phone on its event stream ("SSE Only"), rate limits out of the way. The messages are
queued at once (`SMS_ROUTES=*=android`); each phone pulls when it hears MessageEnqueued, "sends" and
PATCHes Processed, Sent and Delivered, as the app does. Measured: messages per second from queueing to
the last SENT, and the time from a message's queueing to its pull by a phone (p50, p99). Checked: every
message SENT or DELIVERED, none sent twice.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import free_port, settings_store, wait_until  # noqa: E402  (needs the path above)
from tests.phone_sim import PhoneSim  # noqa: E402
from tests.test_phones import PRIVATE_TOKEN, the_service  # noqa: E402


def settings_for(data_dir: Path, database_url: str | None) -> dict[str, str]:
    return ({"DATABASE_URL": database_url} if database_url else {}) | {
        "DATA_DIR": str(data_dir), "SMS_PROVIDERS": "android", "SMS_ROUTES": "*=android", "HTTP_TIMEOUT": "1",
        "WORKER_LEASE_SECONDS": "6.5", "PHONES_PRIVATE_TOKEN": PRIVATE_TOKEN, "PHONES_HOURS": "00:00-23:59",
        "PHONES_RATE_PER_MINUTE": "100000", "PHONES_RATE_PER_DAY": "1000000", "PHONES_LEASE_SECONDS": "300",
        "PHONES_EVENTS_PORT": str(free_port()), "LOG_LEVEL": "warning"}


def run(phones: int, messages: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        settings = settings_for(Path(tmp) / "data", database_url)
        store = settings_store(settings)
        url, events = stack.enter_context(the_service(settings))
        sims = [PhoneSim(url, PRIVATE_TOKEN, f"Bench/phone{n}", events_url=events, reconnect_seconds=1).start()
                for n in range(phones)]
        stack.callback(lambda: [sim.stop() for sim in sims])
        wait_until(lambda: all(d.events_until for d in store.devices()) and len(store.devices()) == phones, 30,
                   what="every phone's stream")
        time.sleep(1.5)  # the worker sees them online
        started = time.time()
        ids = store.enqueue_many("api", 3600, [(f"+3816{n:08d}", f"Poruka {n}", None, None)
                                               for n in range(messages)])
        queued = time.time()
        done = ("SENT", "DELIVERED")
        wait_until(lambda: sum(store.counts().get(status, 0) for status in done) == messages, 1800, 0.5,
                   what="every message sent")
        finished = time.time()
        created = {row["id"]: row["created_at"] for row in map(store.message, ids)}
        latencies = sorted(m.pulled_at - created[int(m.id.split("-")[0])] for sim in sims for m in sim.local.values())
        sent = [entry[0] for sim in sims for entry in sim.radio]
        per_phone = sorted(len(sim.radio) for sim in sims)
        print(f"{phones} phones, {messages} messages ({'PostgreSQL' if database_url else 'SQLite'}):"
              f" queued in {queued - started:.2f} s, all SENT {finished - started:.1f} s after the first was queued:"
              f" {messages / (finished - started):.0f} messages/s")
        print(f"queueing -> a phone's pull: p50 {statistics.median(latencies):.3f} s,"
              f" p99 {latencies[int(0.99 * (len(latencies) - 1))]:.3f} s, max {latencies[-1]:.3f} s")
        print(f"per phone: {per_phone[0]}-{per_phone[-1]} messages; sent twice: {len(sent) - len(set(sent))};"
              f" GET /message calls: {sum(len(sim.pulls) for sim in sims)}")
        assert len(sent) == len(set(sent)) == messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=10)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite, a temporary file)")
    args = parser.parse_args()
    run(args.phones, args.messages, args.database_url)


if __name__ == "__main__":
    main()
