"""gunicorn settings: `gunicorn -c gunicorn.conf.py 'sms_bulk_app:create_app()'`.

gthread workers: a webhook waiting on a slow gateway holds a thread, not a whole process.
The settings are read and checked here, once, before any worker starts: a bad setting
stops gunicorn with one clear message instead of a traceback per worker.
"""
import os
import sys
from pathlib import Path

from dotenv import load_dotenv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from config import ConfigError, load_config  # noqa: E402  (needs the path above)

load_dotenv(Path.cwd() / ".env")
try:
    _config = load_config()
except ConfigError as error:
    print(error.report(), file=sys.stderr)
    sys.exit(2)

bind = f"{_config.host}:{_config.port}"
# gthread, with gunicorn's own error answers (a request it cannot parse) in JSON like the app's.
worker_class = "gunicorn_worker.JsonErrorWorker"
workers = int(os.environ.get("WEB_WORKERS", "2"))
# 32 threads: a synchronous webhook may hold one for WEBHOOK_SYNC_WAIT_SECONDS during a burst
# (MoyKlass allows 7 lookups/s, so about 14 wait at once); /health and the API need threads left.
threads = int(os.environ.get("WEB_THREADS", "32"))
timeout = 60
graceful_timeout = 10
keepalive = 5
# nginx in front is the one trusted hop (TRUSTED_PROXIES); it sets X-Forwarded-For and -Proto.
forwarded_allow_ips = ",".join(sorted(_config.trusted_proxies))

# Metrics (metrics.py): each worker keeps its own in files of PROMETHEUS_MULTIPROC_DIR
# (prometheus_client's multiprocess mode, chosen from the environment when a worker imports it),
# and GET /metrics in any worker sums them with those of this host's worker processes.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_config.metrics_dir)


def on_starting(server: object) -> None:
    """In the master, before any worker: the files of the last run's workers go."""
    import metrics

    metrics.use_directory(_config.metrics_dir)
    metrics.wipe(_config.metrics_dir)


def child_exit(server: object, worker: object) -> None:
    """A worker is gone: its live gauges go; its counters stay in the sums (prometheus_client's recipe)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(_config.metrics_dir))
