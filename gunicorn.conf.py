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
# nginx in front is the one trusted hop; it sets X-Forwarded-For.
forwarded_allow_ips = "127.0.0.1"
