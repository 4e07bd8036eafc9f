"""Benchmark plumbing: fakes and gunicorn as separate processes, a keep-alive load generator."""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from database import POSTGRESQL, SQLITE, parse_database_url  # noqa: E402  (needs the path above)
from sms_bulk_app import open_store  # noqa: E402
from store import Store  # noqa: E402
from tests.fakes import serve  # noqa: E402
from tests.postgres import PostgresServer, find_bin_dir, start_server, stop_server  # noqa: E402

DATABASES = (SQLITE, POSTGRESQL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds} s")


@dataclass
class Fakes:
    moyklass_url: str
    oneclick_url: str


@contextmanager
def running_fakes(latency: float) -> Iterator[Fakes]:
    """Fake MoyKlass (no rate limit, 10 million users) and OneClick, one process each."""
    ports = {"moyklass": free_port(), "oneclick": free_port()}
    processes = [
        multiprocessing.Process(target=serve, args=("moyklass", ports["moyklass"], 0.0, 10_000_000, False),
                                daemon=True),
        multiprocessing.Process(target=serve, args=("oneclick", ports["oneclick"], latency), daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        for port in ports.values():
            wait_for_port(port)
        time.sleep(0.2)
        if not all(process.is_alive() for process in processes):
            raise RuntimeError("a fake did not start: its port was taken meanwhile; run again")
        yield Fakes(f"http://127.0.0.1:{ports['moyklass']}/v1",
                    f"http://127.0.0.1:{ports['oneclick']}/SmsWebBulkApi/SendMsg.aspx")
    finally:
        for process in processes:
            process.terminate()
            process.join()


def fake_settings(fakes: Fakes) -> dict[str, str]:
    return {"API_KEY": "test-api-key", "MOYKLASS_API_URL": fakes.moyklass_url,
            "SMS_API_URL": fakes.oneclick_url, "SMS_USERNAME": "smartlab",
            "SMS_PASSWORD": "oneclick-pass"}


@contextmanager
def running_gunicorn(app: str, env: dict[str, str], args: list[str]) -> Iterator[int]:
    """gunicorn serving `app` on a free port; yields the port."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", *args, "--bind", f"127.0.0.1:{port}", app]
    full_env = {"PATH": os.environ["PATH"], **env, "HOST": "127.0.0.1", "PORT": str(port)}
    process = subprocess.Popen(command, cwd=ROOT, env=full_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        time.sleep(0.2)
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def running_workers(env: dict[str, str], data_dir: str, count: int = 1) -> Iterator[list[subprocess.Popen]]:
    """`count` processes of `python sms_bulk_app.py worker`, stopped with SIGTERM at the end."""
    full_env = {"PATH": os.environ["PATH"], **env}
    workers = [subprocess.Popen([sys.executable, str(ROOT / "sms_bulk_app.py"), "worker"], cwd=data_dir,
                                env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(count)]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait()


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    latencies: list[float]
    statuses: Counter[int]  # how many answers of each HTTP status (0: no answer)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


USER_IDS = itertools.count(1)  # every webhook of a run names a user no earlier one named


def sub_lessons_left(user_id: int) -> bytes:
    return json.dumps({"companyId": 48213, "event": "sub_lessons_left",
                       "object": {"userId": user_id, "lessonsLeft": 2}}).encode()


def post_json(connection: http.client.HTTPConnection, path: str, data: bytes) -> tuple[int, http.client.HTTPConnection]:
    """POST `data` on a keep-alive connection: (status, the connection to go on with). A failed
    exchange is status 0 and a new connection."""
    try:
        connection.request("POST", path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, connection
    except (OSError, http.client.HTTPException):
        connection.close()
        return 0, http.client.HTTPConnection(connection.host, connection.port, timeout=30)


def fire(port: int, path: str, body: Callable[[int], bytes], concurrency: int, seconds: float,
         expect: int = 200) -> LoadResult:
    """`concurrency` keep-alive clients POST for `seconds`; counts answers other than `expect`."""
    stop_at = time.monotonic() + seconds
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, seen = [], Counter()
        while time.monotonic() < stop_at:
            data = body(next(USER_IDS))
            started = time.perf_counter()
            status, connection = post_json(connection, path, data)
            seen[status] += 1
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            statuses.update(seen)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = sum(count for status, count in statuses.items() if status != expect)
    return LoadResult(len(latencies), time.monotonic() - started, errors, latencies, statuses)


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_options(description: str) -> argparse.Namespace:
    """The options every webhook benchmark takes: rounds, seconds per round, concurrent clients."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    return parser.parse_args()


# --- both backends side by side ---------------------------------------------------------------

def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", choices=(*DATABASES, "both"), default="both",
                        help="the backend(s) to measure, side by side in one run (default: both)")


def chosen_databases(choice: str) -> list[str]:
    return list(DATABASES) if choice == "both" else [choice]


@contextmanager
def postgres_for(engines: list[str]) -> Iterator[PostgresServer | None]:
    """A throwaway PostgreSQL cluster (tests/postgres.py) if "postgresql" is among `engines`, stopped at the end."""
    if POSTGRESQL not in engines:
        yield None
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (no initdb): run with --database sqlite")
    server = start_server(bin_dir)
    try:
        yield server
    finally:
        stop_server(server)


@contextmanager
def fresh_database(engine: str, server: PostgresServer | None, data_dir: str) -> Iterator[str]:
    """The DATABASE_URL of a new, empty database: a file in `data_dir`, or a database on `server`
    (dropped at the end)."""
    if engine == SQLITE:
        yield f"sqlite://{Path(data_dir).resolve() / 'sms_bulk_app.db'}"
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


def bench_store(url: str) -> Store:
    """The database at `url`, migrated, for the benchmark's own set-up and checks (a generous statement
    timeout on PostgreSQL: filling a million rows is not what is measured)."""
    store = open_store(parse_database_url(url), 600.0)
    store.initialize()
    return store


def print_side_by_side(title: str, rows: list[tuple[str, dict[str, str]]], engines: list[str]) -> None:
    """A table: one line per measure, one column per backend."""
    print(f"\n{title}")
    width = max(len(label) for label, _ in rows)
    print(f"{'':<{width}}  " + "  ".join(f"{engine:>12}" for engine in engines))
    for label, values in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{values.get(engine, '-'):>12}" for engine in engines))
