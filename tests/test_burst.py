"""A burst of synchronous webhooks against MoyKlass' real 7 requests/s: nothing waits long, /health is not starved."""
from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from store import DELIVERED, QUEUED, SENDING, SENT
from tests.conftest import load_fixture, running_gunicorn, running_worker, settings_store
from tests.fakes import FakeMoyKlass, numbered_phone

BURST, BURST_SECONDS = 300, 2.0


def test_300_sync_webhooks_in_2_s_wait_boundedly_and_health_is_not_starved(settings, oneclick):
    """Before: p50 24 s, max 48 s per webhook, /health 21.7 s. Now a webhook that cannot get
    MoyKlass' rate limit or a send slot within WEBHOOK_SYNC_WAIT_SECONDS answers 202 queued."""
    moyklass = FakeMoyKlass(numbered_users=BURST).start()  # 429 past 7 requests/s, as the real one
    settings.update(MOYKLASS_API_URL=f"http://127.0.0.1:{moyklass.port}/v1", MOYKLASS_RATE_PER_SEC="6",
                    WEBHOOK_SYNC_WAIT_SECONDS="2", SMS_DLR_MAX_SECONDS="0")
    health_times: list[float] = []
    answers: list[tuple[int, dict, float]] = []
    try:
        with running_gunicorn(settings, workers=2, threads=32) as base_url, running_worker(settings):
            burst_over = threading.Event()

            def probe_health() -> None:
                with requests.Session() as session:
                    while not burst_over.is_set():
                        started = time.monotonic()
                        assert session.get(f"{base_url}/health", timeout=10).status_code == 200
                        health_times.append(time.monotonic() - started)
                        time.sleep(0.02)

            def fire(user_id: int) -> tuple[int, dict, float]:
                time.sleep(user_id * BURST_SECONDS / BURST)  # spread over the burst
                payload = load_fixture("sub_lessons_left")
                payload["object"]["userId"] = user_id
                started = time.monotonic()
                response = requests.post(f"{base_url}/webhook", json=payload, timeout=60)
                return response.status_code, response.json(), time.monotonic() - started

            prober = threading.Thread(target=probe_health)
            prober.start()
            with ThreadPoolExecutor(max_workers=BURST) as pool:
                answers = list(pool.map(fire, range(1, BURST + 1)))
            burst_over.set()
            prober.join()
            time.sleep(1.0)  # the worker goes on; nothing it sends may be a duplicate
    finally:
        moyklass.stop()

    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) <= {200, 202}, statuses
    assert statuses[200] >= 6  # those MoyKlass' limit allowed within the wait were sent in the request
    assert all(body["status"] == ("success" if status == 200 else "queued") for status, body, _ in answers)
    assert len({body["id"] for _, body, _ in answers}) == BURST
    webhook_times = sorted(took for _, _, took in answers)
    assert webhook_times[-1] < 2.0 + 1.5, f"slowest webhook {webhook_times[-1]:.2f} s"
    p99 = statistics.quantiles(health_times, n=100)[98]
    print(f"webhooks: {dict(statuses)}, p50 {statistics.median(webhook_times):.3f} s, max {webhook_times[-1]:.3f} s;"
          f" /health: {len(health_times)} probes, p99 {p99 * 1000:.0f} ms")
    # Not a speed goal (bench/bench_burst.py measures those): /health is not starved by the waiting
    # webhooks, as it was (21.7 s), on however loaded a machine the tests run.
    assert max(health_times) < 1.5, f"/health took {max(health_times):.2f} s during the burst"
    store = settings_store(settings)
    counts = store.counts()
    assert sum(counts[s] for s in (QUEUED, SENDING, SENT, DELIVERED)) == sum(counts.values()) == BURST
    phones = Counter(m["phone"] for m in oneclick.messages)
    assert max(phones.values()) == 1 and set(phones) <= {numbered_phone(u) for u in range(1, BURST + 1)}
