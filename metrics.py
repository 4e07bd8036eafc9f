"""Prometheus metrics: every metric of the service is defined here, and counted through the small
functions below (one call per event, a no-op in a process that set up no metrics).

Where the numbers live. Under gunicorn each web process writes its metrics to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode): gunicorn.conf.py puts the
directory (default DATA_DIR/metrics) in the environment before any worker imports
prometheus_client, the master wipes the files at start, and `child_exit` marks a dead worker's
files (`multiprocess.mark_process_dead`). Worker processes of the same host write theirs to the
`worker/` subdirectory, where each, as it starts, removes the files of workers no longer running
(several run at once, so none may wipe it all). GET /metrics in any web process sums both
directories, and reads the queue from the database as it is scraped. Each host's /metrics shows
its own processes; the queue gauges are the shared database's, the same on every host.

prometheus_client chooses between in-memory and file-backed values when it is imported, from the
environment; a process that learns its directory later (`serve`, `worker`) reselects with the
library's own `values.get_value_class()` before it creates any metric. Metrics are created by
`init_app` or `setup_worker`, never at import: in-process tests get a registry per app.
"""
from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from glob import glob
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

from devices import STATES, PhoneSettings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_SUBDIR = "worker"
NO_PROVIDER = "none"  # the provider label of a status change made before any provider was tried
SEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _Metrics:
    """Every metric a process updates. Labels hold only fixed sets: statuses, provider names, HTTP
    codes, process roles; never a phone number, a user id or a message id."""

    def __init__(self, registry: CollectorRegistry | None):
        self.messages = Counter("sms_messages", "Messages that moved to a status, by status and provider",
                                ("status", "provider"), registry=registry)
        self.send_seconds = Histogram("sms_send_duration_seconds", "Time of one send request to a provider",
                                      ("provider",), buckets=SEND_BUCKETS, registry=registry)
        self.webhooks = Counter("sms_webhook_responses", "Answers to POST /webhook, by HTTP status code",
                                ("code",), registry=registry)
        self.moyklass = Counter("sms_moyklass_requests", "Requests to the MoyKlass API, by HTTP status code"
                                " (429: rate limited; unreachable: no answer)", ("code",), registry=registry)
        self.processes = Gauge("sms_processes", "Processes of this host that count metrics, by role (web, worker)",
                               ("role",), multiprocess_mode="livesum", registry=registry)


_current: _Metrics | None = None


# --- the hooks: one call per event ---

def message_status(status: str, provider: str | None, count: int = 1) -> None:
    """`count` messages moved to `status` (as written to the outbox)."""
    if _current is not None and count:
        _current.messages.labels(status, provider or NO_PROVIDER).inc(count)


def changes_written(changes: Iterable[Any], lost: Iterable[int] = ()) -> None:
    """The results (store.Change) just written, less those of `lost` messages (taken over, not written)."""
    lost = set(lost)
    for change in changes:
        if change.message_id not in lost:
            message_status(change.status, change.fields.get("provider"))


@contextmanager
def timed_send(provider: str) -> Iterator[None]:
    """Times one send request to `provider`."""
    started = time.monotonic()
    try:
        yield
    finally:
        if _current is not None:
            _current.send_seconds.labels(provider).observe(time.monotonic() - started)


def moyklass_answer(code: int | None) -> None:
    """One MoyKlass request answered with HTTP `code` (None: no answer)."""
    if _current is not None:
        _current.moyklass.labels(str(code) if code else "unreachable").inc()


# --- setting up ---

def init_app(app: Flask, store: Any, token: str | None, phone_settings: PhoneSettings | None) -> None:
    """GET /metrics on `app` (behind `Authorization: Bearer METRICS_TOKEN` when set), and the count
    of webhook answers. In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set) the metrics of every
    process of this host are read from their files; otherwise this app's own registry is served."""
    global _current
    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        _current = _Metrics(None)
        registry.register(_HostFiles(Path(directory)))
    else:
        _current = _Metrics(registry)
    _current.processes.labels("web").set(1)
    registry.register(_QueueCollector(store, phone_settings))

    def serve_metrics() -> Response:
        given = request.headers.get("Authorization", "")
        if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return Response("missing or wrong metrics token\n", 401, {"WWW-Authenticate": "Bearer"},
                            mimetype="text/plain")
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_url_rule("/metrics", "metrics", serve_metrics, methods=["GET"])
    metrics = _current

    @app.after_request
    def count_webhook(response: Response) -> Response:
        if request.endpoint == "sms_bulk_app.webhook":
            metrics.webhooks.labels(str(response.status_code)).inc()
        return response


def use_directory(directory: Path) -> None:
    """This process (and those it forks) keep their metrics in files in `directory`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    if values.ValueClass is values.MutexValue:  # prometheus_client was imported before the variable was set
        values.ValueClass = values.get_value_class()


def wipe(directory: Path) -> None:
    """Remove the metric files of an earlier run (gunicorn's master, or `serve`, before it starts)."""
    for path in glob(str(directory / "*.db")):
        os.remove(path)


def setup_worker(directory: Path) -> None:
    """A worker process: its metrics in `directory`/worker, where files of workers gone are removed."""
    global _current
    own = directory / WORKER_SUBDIR
    use_directory(own)
    for path in glob(str(own / "*.db")):
        if not _running(int(Path(path).stem.rsplit("_", 1)[1])):
            os.remove(path)
    _current = _Metrics(None)
    _current.processes.labels("worker").set(1)


def worker_stopped() -> None:
    """A worker process stops: it no longer counts among the live processes."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(os.getpid(), directory)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class _HostFiles:
    """The metric files of this host's web processes and of its worker processes, summed."""

    def __init__(self, directory: Path):
        self.directory = directory

    def collect(self) -> Iterable[Any]:
        try:
            return multiprocess.MultiProcessCollector.merge(self._files(), accumulate=True)
        except FileNotFoundError:  # a starting worker removed a gone worker's file meanwhile
            return multiprocess.MultiProcessCollector.merge(self._files(), accumulate=True)

    def _files(self) -> list[str]:
        return glob(str(self.directory / "*.db")) + glob(str(self.directory / WORKER_SUBDIR / "*.db"))


class _QueueCollector:
    """The outbox's queue, read from the database as /metrics is scraped (index-only queries)."""

    def __init__(self, store: Any, phone_settings: PhoneSettings | None):
        self.store = store
        self.phone_settings = phone_settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("sms_database_up", "1 if the queue could be read from the database at this scrape")
        try:
            now = time.time()
            queue = self.store.queue_gauges(now)
            phones = self._phones(now)
        except Exception as error:  # the scrape must still answer, saying the database is not readable
            log.warning("Metrics: the queue could not be read: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("sms_queue_messages", "Messages in the outbox waiting or being sent, by status",
                                  labels=("status",))
        for status, count in queue.depth.items():
            depth.add_metric([status], count)
        yield depth
        yield GaugeMetricFamily("sms_queue_oldest_age_seconds", "How long the longest-waiting QUEUED message has"
                                " been due (0: none is due)", value=queue.oldest_due_age)
        if phones is not None:
            by_state = GaugeMetricFamily("sms_phones", "Phones enrolled as gateways, by state (online: seen within"
                                         " PHONES_OFFLINE_SECONDS)", labels=("state",))
            for state, count in phones.items():
                by_state.add_metric([state], count)
            yield by_state

    def _phones(self, now: float) -> dict[str, int] | None:
        """How many phones are in each state; None without phones (android not in SMS_PROVIDERS)."""
        if self.phone_settings is None:
            return None
        counts = dict.fromkeys(STATES, 0)
        for device in self.store.devices():
            counts[self.phone_settings.state(device, now)] += 1
        return counts
