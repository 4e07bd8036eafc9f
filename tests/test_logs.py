"""Log lines on disk: the seed's format, rotation, and no phone or secret in any line."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from logs import LOG_BACKUP_COUNT, SharedRotatingFileHandler
from sms_bulk_app import create_app
from tests.conftest import load_fixture

FULL_PHONES = ["381641000002", "381651234000", "381641000001", "0641234567"]


def log_text(settings) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return (Path(settings["DATA_DIR"]) / "sms_bulk_app.log").read_text(encoding="utf-8")


def test_log_file_has_no_phone_and_no_secret(settings, moyklass, oneclick):
    settings.update(LOG_LEVEL="debug", WEBHOOK_SECRET="hook-secret-123")
    app = create_app(settings)
    client = app.test_client()
    moyklass.add_user(1002, "381641000002")
    moyklass.add_user(1001, "381641000001")
    assert client.post("/webhook?secret=hook-secret-123", json=load_fixture("user_new")).status_code == 200
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
