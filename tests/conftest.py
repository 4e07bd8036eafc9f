"""Fixtures: the fakes as real HTTP servers on loopback, a fresh app on a temporary directory per test."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from config import load_config
from sms_bulk_app import create_app, open_store
from store import Store
from tests.fake_gateways import FakeSmsAero
from tests.fakes import FakeMoyKlass, FakeOneClick

pytest_plugins = ["tests.postgres"]
FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "production_password_hashing: hash with the service's own Argon2id profile")
    config.addinivalue_line("markers", "sqlite_only: about the SQLite file itself; not run on PostgreSQL")
    config.addinivalue_line("markers", "input_only: inputs refused before the database is asked; run on SQLite")


@pytest.fixture(autouse=True)
def quick_password_hashing(request, monkeypatch) -> None:
    """In-process tests hash passwords with Argon2id at its smallest cost: the service's profile
    (RFC 9106's, 64 MiB) costs 0.2 s of CPU a hash, and the console's tests make and check hundreds.
    Processes the tests start (`users create`, gunicorn) and the tests marked
    production_password_hashing keep the service's own profile."""
    if request.node.get_closest_marker("production_password_hashing") is None:
        from argon2 import PasswordHasher

        from console import accounts

        monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / "moyklass" / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture
def moyklass():
    fake = FakeMoyKlass().start()
    yield fake
    fake.stop()


@pytest.fixture
def oneclick():
    fake = FakeOneClick().start()
    yield fake
    fake.stop()


@pytest.fixture
def smsaero():
    fake = FakeSmsAero().start()
    yield fake
    fake.stop()


# The tests that keep data (those using the fixture `database_settings`, through `settings`, `app`,
# `store`...) run twice, on a SQLite file and on a fresh, migrated database of a throwaway PostgreSQL
# server (tests/postgres.py): their ids end in [sqlite] or [postgresql]. SMS_TEST_DATABASE=sqlite or
# =postgresql runs them on that one alone. Run on SQLite only: the modules of EDGE_MODULES, tests
# marked sqlite_only or input_only, and tests that ask for PostgreSQL themselves (`postgres_url`).
ENGINES = {"sqlite": ("sqlite",), "postgresql": ("postgresql",)}.get(os.environ.get("SMS_TEST_DATABASE", ""),
                                                                      ("sqlite", "postgresql"))
# Tests of the HTTP edge and the deployment (nginx, gunicorn's parser, body limits, request
# validation, the OpenAPI document, settings, logs, the browser): they keep data only to have an
# app to talk to, and the database behind it changes nothing they check.
EDGE_MODULES = frozenset({"test_bodies", "test_burst", "test_config", "test_console_browser",
                          "test_console_pages_browser", "test_deploy",
                          "test_docs", "test_error_pages", "test_gunicorn", "test_logs", "test_openapi",
                          "test_proxy", "test_validation"})
# A test of SQLite itself (its file, another program locking it), not of the service's behaviour.
sqlite_only = pytest.mark.sqlite_only
# A table of inputs refused before the database is asked for anything: the engine changes nothing
# they check, and run twice they cost the suite half a minute.
input_only = pytest.mark.input_only


def pytest_generate_tests(metafunc) -> None:
    if ("database_engine" in metafunc.fixturenames and "postgres_url" not in metafunc.fixturenames
            and metafunc.module.__name__.rsplit(".", 1)[-1] not in EDGE_MODULES
            and metafunc.definition.get_closest_marker("sqlite_only") is None
            and metafunc.definition.get_closest_marker("input_only") is None):
        metafunc.parametrize("database_engine", ENGINES, indirect=True)


@pytest.fixture
def database_engine(request) -> str:
    """"sqlite" or "postgresql", as pytest_generate_tests chose for this test; SQLite where it did not."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_settings(request, database_engine) -> dict[str, str]:
    return {"DATABASE_URL": request.getfixturevalue("migrated_postgres_url")} if database_engine == "postgresql" else {}


@pytest.fixture
def settings(tmp_path, moyklass, oneclick, database_settings) -> dict[str, str]:
    """Settings for an app wired to the fakes; a test may change them before building the app."""
    return database_settings | {
        "DATA_DIR": str(tmp_path / "data"),
        "API_KEY": moyklass.api_key,
        "MOYKLASS_API_URL": f"http://127.0.0.1:{moyklass.port}/v1",
        "MOYKLASS_RATE_PER_SEC": "1000",
        "SMS_PROVIDER": "oneclick",
        "SMS_API_URL": oneclick.send_url,
        "SMS_USERNAME": oneclick.username,
        "SMS_PASSWORD": oneclick.password,
        "HTTP_TIMEOUT": "2",
    }


@pytest.fixture
def store(tmp_path, database_settings) -> Store:
    """A migrated outbox of its own: a SQLite file, or a fresh PostgreSQL database."""
    return settings_store(database_settings | {"DATA_DIR": str(tmp_path)})


def settings_store(settings: dict[str, str]) -> Store:
    """The store an app built from `settings` uses, opened and migrated: SQLite in DATA_DIR, or
    DATABASE_URL's."""
    store = open_store(load_config(settings).database, 5.0)
    store.initialize()
    return store


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_gunicorn(settings: dict[str, str], workers: int, threads: int = 16):
    """The service under real gunicorn, as production runs it; yields its base URL."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], **settings, "HOST": "127.0.0.1", "PORT": str(port),
           "WEB_WORKERS": str(workers), "WEB_THREADS": str(threads)}
    log_path = Path(settings["DATA_DIR"]).parent / "gunicorn.out"
    with open(log_path, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
             "sms_bulk_app:create_app()"],
            cwd=Path(settings["DATA_DIR"]).parent, env=env, stdout=output, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening, or still loading the app
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=20)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def worker_settings(settings) -> dict[str, str]:
    """Settings for tests with a worker: fast retries, short leases (HTTP_TIMEOUT=1 allows 6 s)."""
    return settings | {"HTTP_TIMEOUT": "1", "WORKER_LEASE_SECONDS": "6.5", "SMS_RETRY_BASE_SECONDS": "0.05"}


def command(settings: dict[str, str], *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "sms_bulk_app.py"), *args]


def command_env(settings: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], **settings}


def run_command(settings: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python sms_bulk_app.py ARGS` as an operator would run it."""
    return subprocess.run(command(settings, *args), cwd=Path(settings["DATA_DIR"]).parent,
                          env=command_env(settings), capture_output=True, text=True, timeout=60)


@contextmanager
def running_worker(settings: dict[str, str]):
    """`python sms_bulk_app.py worker` as its own process; stopped with SIGTERM at the end."""
    Path(settings["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    output = open(Path(settings["DATA_DIR"]).parent / f"worker-{time.monotonic_ns()}.out", "wb")
    process = subprocess.Popen(command(settings, "worker"), cwd=Path(settings["DATA_DIR"]).parent,
                               env=command_env(settings), stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)
        output.close()
