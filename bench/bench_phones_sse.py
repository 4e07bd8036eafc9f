"""Twenty phones holding their event streams open cost the web app nothing: its capacity and latency as before.

    .venv/bin/python bench/bench_phones_sse.py [--phones 20] [--requests 2000] [--threads 4]

gunicorn with few threads (1 worker x --threads, gthread, as production runs it), the worker and the event
stream process on 127.0.0.1. The same load, 16 clients at once asking the API (GET /api/v1/phones, which
reads every phone's health) and /health, is measured with no phone, then with --phones simulated phones
each holding GET /api/mobile/v1/events open (served by the event stream process, not gunicorn): requests per
second, p50 and p99 latency. Without that process, each stream would hold one of those --threads threads.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import api_keys  # noqa: E402  (needs the path above)
from bench.bench_phones import settings_for  # noqa: E402
from tests.conftest import settings_store, wait_until  # noqa: E402
from tests.phone_sim import PhoneSim  # noqa: E402
from tests.test_phones import PRIVATE_TOKEN, the_service  # noqa: E402


def load(base: str, key: str, count: int) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms) of `count` requests from 16 clients at once."""
    local = threading.local()

    def one(n: int) -> float:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        session = local.session
        started = time.perf_counter()
        path, headers = ("/api/v1/phones", {"Authorization": f"Bearer {key}"}) if n % 2 else ("/health", {})
        assert session.get(base + path, headers=headers, timeout=30).status_code == 200
        return (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        times = sorted(pool.map(one, range(count)))
    return count / (time.perf_counter() - started), statistics.median(times), times[int(0.99 * (count - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        settings = settings_for(Path(tmp) / "data", None) | {"WEB_THREADS": str(args.threads)}
        store = settings_store(settings)
        _, key = api_keys.create(store, "bench", ["admin"], None)
        url, events = stack.enter_context(the_service(settings, threads=args.threads))
        base = url.removesuffix("/api/mobile/v1")
        load(base, key, 200)  # warm up
        before = load(base, key, args.requests)
        sims = [PhoneSim(url, PRIVATE_TOKEN, f"Bench/phone{n}", events_url=events, reconnect_seconds=1).start()
                for n in range(args.phones)]
        stack.callback(lambda: [sim.stop() for sim in sims])
        wait_until(lambda: sum(1 for d in store.devices() if d.events_until and d.events_until > time.time())
                   == args.phones, 30, what="every phone's stream")
        during = load(base, key, args.requests)
        open_streams = sum(1 for d in store.devices() if d.events_until and d.events_until > time.time())
        print(f"gunicorn 1 worker x {args.threads} threads; {args.requests} requests, 16 at once"
              " (GET /api/v1/phones and /health)")
        for label, (rate, p50, p99) in (("no phone", before), (f"{open_streams} phones streaming", during)):
            print(f"  {label:<22} {rate:7.0f} requests/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")


if __name__ == "__main__":
    main()
