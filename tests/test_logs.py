"""Log lines on disk: the seed's format, rotation, and no phone or secret in any line."""
from __future__ import annotations

import logging
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from logs import LOG_BACKUP_COUNT, SharedRotatingFileHandler
from sms_bulk_app import create_app
from tests.conftest import command, command_env, free_port, load_fixture, wait_until

FULL_PHONES = ["381641000002", "381651234000", "381641000001", "0641234567"]


def log_text(settings) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return (Path(settings["DATA_DIR"]) / "sms_bulk_app.log").read_text(encoding="utf-8")


def test_log_file_has_no_phone_and_no_secret(settings, moyklass, oneclick):
    settings.update(LOG_LEVEL="debug", WEBHOOK_SECRET="hook-secret-123", SMS_TEXT_USER_NEW="Dobrodošli, {name}!")
    app = create_app(settings)
    client = app.test_client()
    moyklass.add_user(1002, "381641000002")
    moyklass.add_user(1001, "381641000001")
    sent = client.post("/webhook?secret=hook-secret-123", json=load_fixture("user_new"))
    assert (sent.status_code, sent.get_json()["status"]) == (200, "success")
    oneclick.answer_status = -1
    assert client.post("/webhook?secret=hook-secret-123",
                       json=load_fixture("sub_lessons_left")).status_code == 500
    try:
        raise ValueError("gateway choked on +381 64 1234567 with pwd=oneclick-pass")
    except ValueError:
        logging.getLogger("sms_bulk_app").exception("Unexpected failure for 0641234567")
    logging.getLogger("werkzeug").info('"POST /webhook?secret=hook-secret-123 HTTP/1.1" 200 -')
    token = app.extensions["sms_bulk_app"].dispatcher.moyklass.tokens.get().value
    logging.getLogger("sms_bulk_app").info("token in an error text: %s", token)

    text = log_text(settings)
    assert "Webhook body from" in text and "Traceback" in text  # the lines under test are there
    assert "381*******02" in text  # masked, not removed
    for phone in FULL_PHONES + ["+381 64 1234567"]:
        assert phone not in text
    for secret in [moyklass.api_key, oneclick.password, "hook-secret-123", token]:
        assert secret not in text
    line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR): .* \[in \S+:\d+\]$")
    first_lines = [entry for entry in text.splitlines() if re.match(r"^\d{4}-", entry)]
    assert first_lines and all(line.match(entry) for entry in first_lines)


def test_rotation_keeps_ten_files_of_about_one_megabyte(tmp_path):
    handler = SharedRotatingFileHandler(tmp_path / "app.log")
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "x" * 999, None, None)
    for _ in range(12_500):  # ~12.5 MB
        handler.emit(record)
    handler.close()
    files = sorted(tmp_path.glob("app.log*"))
    rotated = [f for f in files if not f.name.endswith(".lock")]
    assert len(rotated) == 1 + LOG_BACKUP_COUNT
    assert all(f.stat().st_size <= 1_000_000 for f in rotated)
    assert all(f.stat().st_size > 900_000 for f in rotated if f.name != "app.log")


def test_a_process_writing_after_another_rotated_follows_the_new_file(tmp_path):
    first, second = (SharedRotatingFileHandler(tmp_path / "app.log") for _ in range(2))
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "y" * 999, None, None)
    for _ in range(1_100):  # the first handler rotates once
        first.emit(record)
    second.emit(logging.LogRecord("t", logging.INFO, __file__, 1, "after", None, None))
    first.close()
    second.close()
    assert (tmp_path / "app.log").read_text().splitlines()[-1] == "after"


def answers(base_url: str) -> bool:
    try:
        return requests.get(f"{base_url}/health", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


@contextmanager
def serving(settings: dict[str, str], cwd: Path) -> Iterator[str]:
    """`python sms_bulk_app.py` (web app and worker) on a free loopback port, its stderr in cwd/serve.err;
    yields its base URL and stops it with SIGTERM."""
    settings = settings | {"HOST": "127.0.0.1", "PORT": str(free_port())}
    with open(cwd / "serve.err", "wb") as stderr:
        process = subprocess.Popen(command(settings), cwd=cwd, env=command_env(settings),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    base_url = f"http://127.0.0.1:{settings['PORT']}"
    try:
        wait_until(lambda: process.poll() is not None or answers(base_url), what="the server")
        assert process.poll() is None, (cwd / "serve.err").read_text()
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


ACCESS_LINE = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4} \d\d:\d\d:\d\d\] "[^"]*" \d{3} -$')


def test_request_lines_stay_out_of_the_app_log_and_the_banner_goes_to_the_terminal(settings, tmp_path):
    with serving(settings, tmp_path) as base_url:
        assert requests.get(f"{base_url}/api/v1/clients", timeout=5).status_code == 401
    app_log = log_text(settings)
    assert "SMSBulkApp serving on" in app_log
    assert "GET /api/v1/clients" not in app_log and "GET /health" not in app_log
    assert "/werkzeug/" not in app_log
    terminal = (tmp_path / "serve.err").read_text().splitlines()
    assert f"SMSBulkApp serving on {base_url} (web app and worker; Ctrl+C stops both)" in terminal
    assert not list(tmp_path.rglob("access*"))  # ACCESS_LOG is off by default


def test_access_log_holds_the_request_lines_when_set(settings, tmp_path):
    settings["ACCESS_LOG"] = str(tmp_path / "logs" / "access.log")
    with serving(settings, tmp_path) as base_url:
        assert requests.get(f"{base_url}/api/v1/clients?tag=vip", timeout=5).status_code == 401
    lines = (tmp_path / "logs" / "access.log").read_text().splitlines()
    assert lines and all(ACCESS_LINE.match(line) for line in lines)
    assert [line.split('"')[1:] for line in lines if "/api/" in line] == \
        [["GET /api/v1/clients?tag=vip HTTP/1.1", " 401 -"]]
    assert "GET /api/v1/clients" not in log_text(settings)


def test_phones_in_urls_and_odd_forms_are_masked_and_control_characters_escaped(settings, tmp_path):
    settings.update(ACCESS_LOG=str(tmp_path / "access.log"), LOG_LEVEL="debug")
    queries = ["phone=064%20987%206543", "phone=%2B381%2064%20987%206543", "phone=064.123.4567",
               "phone=064/123/4567", "phone=064%252F123%252F4567", "phone=064+123+4567",
               "phone=%2B381+(0)+64+123+4567", "phone=064%E2%80%91123%E2%80%914567", "phone=064_123_4567",
               "since=2026-11-23T08:00:00&amount=1234.5678&ip=192.168.100.200&day=23.11.2026",
               "note=%0D%0A2026-01-01%2000:00:00,000%20INFO:%20forged%00%C2%85"]
    with serving(settings, tmp_path) as base_url:
        for query in queries:
            requests.get(f"{base_url}/api/v1/mailings/12/messages?{query}", timeout=5)
        requests.post(f"{base_url}/webhook", timeout=5,
                      data=b"064.123.4567 or 064/123-4567\n2026-01-01 00:00:00,000 INFO: forged\x00")
    access_lines = [line.split('"')[1] for line in (tmp_path / "access.log").read_text().splitlines()
                    if "/api/" in line]
    assert access_lines == [f"GET /api/v1/mailings/12/messages?{query} HTTP/1.1" for query in [
        "phone=064*****43", "phone=+381*******43", "phone=064*****67", "phone=064*****67", "phone=064*****67",
        "phone=064*****67", "phone=+381********67", "phone=064*****67", "phone=064*****67",
        "since=2026-11-23T08:00:00&amount=1234.5678&ip=192.168.100.200&day=23.11.2026",
        "note=\\r\\n2026-01-01 00:00:00,000 INFO: forged\\x00\\x85"]]
    app_log = log_text(settings)
    body_lines = [line for line in app_log.splitlines() if "Webhook body from" in line]
    assert len(body_lines) == 1
    assert body_lines[0].split(": ", 2)[2].rsplit(" [in ", 1)[0] == \
        "064*****67 or 064*****67\\n2026-01-01 00:00:00,000 INFO: forged\\x00"
    for text in (app_log, (tmp_path / "access.log").read_text()):
        assert "forged" not in "".join(line for line in text.splitlines() if line.startswith("2026-01-01"))
        assert "\x00" not in text and "\r" not in text
        for phone in ["987 6543", "9876543", "123.4567", "123/4567", "123-4567", "1234567", "123+4567",
                      "123\u20114567", "123_4567"]:
            assert phone not in text


def test_the_data_directory_and_its_files_are_the_service_users_alone(settings):
    """Under a umask that lets others read (022, `make run` in a shell), what holds phones, names,
    password hashes and the log is still private: the directory 0700, its files 0600."""
    import os

    old = os.umask(0o022)
    try:
        app = create_app(settings)  # makes DATA_DIR, the database and the log
        app.extensions["sms_bulk_app"].store.enqueue("api", 3600, phone="+381641234567", text="Zdravo")
        logging.getLogger("sms_bulk_app").warning("a line for the log file")
    finally:
        os.umask(old)
    data = Path(settings["DATA_DIR"])
    modes = {path.name: path.stat().st_mode & 0o777 for path in data.iterdir() if path.is_file()}
    assert {"sms_bulk_app.db", "sms_bulk_app.db-wal", "sms_bulk_app.db-shm", "sms_bulk_app.log"} <= set(modes)
    assert (data.stat().st_mode & 0o777, {name: mode for name, mode in modes.items() if mode != 0o600}) == (0o700, {})
